"""The command line as users type it: --help everywhere, options from the config's fields, a
params file under the command line. Its mistakes are tests/test_cli_mistakes.py's."""

from __future__ import annotations

import pytest

from tests.conftest import ganforge


@pytest.mark.parametrize(
    "command", [[], ["data"], ["data", "build"], ["data", "verify"], ["train"]]
)
def test_every_command_has_help(command):
    result = ganforge(*command, "--help")
    assert result.returncode == 0
    assert "Usage: ganforge" in result.stdout


def test_build_help_explains_every_config_field_with_its_default():
    """The options are BuildDatasetConfig's fields, with their descriptions as help."""
    from pipelines.dataset.config import BuildDatasetConfig

    text = "".join(ganforge("data", "build", "--help").stdout.split())  # wrapping aside
    for name in BuildDatasetConfig.model_fields:
        assert f"--{name.replace('_', '-')}" in text
        assert "".join(BuildDatasetConfig.option_help(name).split()) in text
    assert "(default:128;celeba:1024)" in text  # a default that differs per source


def test_params_file_gives_the_source_when_the_command_line_does_not(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"build_dataset:\n  source: folder\n  out: {tmp_path / 'out'}\n")
    result = ganforge("data", "build", "--params", str(params))
    assert result.returncode == 2
    assert "source 'folder' needs --input PATH" in result.stderr
