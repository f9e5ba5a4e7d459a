"""The command line as users type it: --help everywhere, options from the config's fields, a
params file under the command line. Its mistakes are tests/test_cli_mistakes.py's."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

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


# Prints what Prefect's own temporary server runs (in a subprocess: importing Prefect's server
# stack here would register its database types with the SQLAlchemy of every later test).
PREFECTS_COMMAND = """
import json, subprocess
from prefect.server.api import server
started = {}
subprocess.Popen = lambda **given: started.update(given)
server.SubprocessASGIServer(port=4321)._run_uvicorn_command()
print(json.dumps(started))
"""


def test_the_temporary_prefect_server_is_the_one_prefect_starts():
    """`data build` starts the server of Prefect's ephemeral mode itself (earlier than Prefect
    would): the same command and settings, less --app-dir (prefect is importable anyway)."""
    from pipelines.cli.common import TEMPORARY_SERVER_ENVIRONMENT, temporary_server_command

    printed = subprocess.run([sys.executable, "-c", PREFECTS_COMMAND], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    started = json.loads(printed)
    argv = started["args"]
    app_dir = argv.index("--app-dir")
    assert argv[:app_dir] + argv[app_dir + 2 :] == temporary_server_command(4321)
    assert TEMPORARY_SERVER_ENVIRONMENT.items() <= started["env"].items()


def test_without_prefect_api_url_the_flow_runs_on_a_temporary_server_that_stops(tmp_path):
    """No Prefect server configured: the build's flow run is recorded in PREFECT_HOME's
    database (here a new one, which its first start migrates) and the server is gone after."""
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(home)}
    args = ["--num-images", "4", "--max-resolution", "8", "--out", str(tmp_path / "out")]
    result = ganforge("data", "build", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert "the first began" in result.stdout
    with sqlite3.connect(home / "prefect.db") as database:
        runs = database.execute(
            "SELECT flow.name, flow_run.state_type FROM flow_run JOIN flow "
            "ON flow_run.flow_id = flow.id"
        ).fetchall()
    assert runs == [("build-dataset", "COMPLETED")]
    left = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"PREFECT_HOME={home}".encode() in environ.read_bytes():
                left.append(environ.parent.name)
        except OSError:  # gone, or not ours to read
            continue
    assert not left, f"processes of the build still running: {left}"
