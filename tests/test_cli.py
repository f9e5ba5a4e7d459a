"""The command line as users type it: --help everywhere, usage errors exit 2 naming the option."""

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


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--max-resolution", "48"], "--max-resolution: Value error, must be a power of two"),
        (["--max-resolution", "2048"], "--max-resolution"),
        (["--shard-size", "0"], "--shard-size"),
        (["--max-reject-fraction", "1.5"], "--max-reject-fraction"),
        (["--source", "folder"], "needs --input PATH"),
        (["--source", "celebahq"], "'celebahq' is not one of 'synthetic', 'folder'"),
        (["--num-images", "ten"], "Invalid value for '--num-images'"),
        (["--frobnicate"], "No such option: --frobnicate"),
    ],
)
def test_bad_usage_exits_2_naming_the_option(args, named, tmp_path):
    result = ganforge("data", "build", "--out", str(tmp_path / "out"), *args)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_missing_input_folder_exits_2(tmp_path, subprocess_env):
    result = ganforge(
        "data",
        "build",
        "--source",
        "folder",
        "--input",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "out"),
        env=subprocess_env,
    )
    assert result.returncode == 2
    assert f"--input {tmp_path / 'nope'} does not exist" in result.stderr


def test_params_file_with_unknown_key_exits_2_naming_it(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("build_dataset:\n  source: synthetic\n  shard_sise: 10\n")
    result = ganforge("data", "build", "--params", str(params))
    assert result.returncode == 2
    assert "--shard-sise: Extra inputs are not permitted" in result.stderr


def test_verify_of_a_folder_without_manifest_exits_2(tmp_path):
    result = ganforge("data", "verify", str(tmp_path))
    assert result.returncode == 2
    assert "manifest.json is missing" in result.stderr and "ganforge data build" in result.stderr


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
