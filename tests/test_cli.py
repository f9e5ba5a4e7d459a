"""The command line as users type it: --help everywhere, options from the config's fields, a
params file under the command line. Its mistakes are tests/test_cli_mistakes.py's."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import running
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


def _processes_with_home(home: Path) -> list[int]:
    """Pids of the processes whose environment names PREFECT_HOME=home."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"PREFECT_HOME={home}\0".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


def _flow_runs(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "prefect.db") as database:
        return database.execute(
            "SELECT flow.name, flow_run.state_type FROM flow_run JOIN flow "
            "ON flow_run.flow_id = flow.id"
        ).fetchall()


def _local_build(tmp_path: Path, home: Path, out: str, keep: str, **extra: str):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(home), "GANFORGE_PREFECT_SERVER_KEEP_SECONDS": keep} | extra
    args = ["--num-images", "4", "--max-resolution", "8", "--out", str(tmp_path / out)]
    result = ganforge("data", "build", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert "the first began" in result.stdout
    return result


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture(scope="module")
def migrated_home(tmp_path_factory) -> Path:
    """PREFECT_HOME of one build on a temporary local server (keep 0 s): its database, new, was
    migrated by that server's start (seconds), which later tests copy instead of repeating."""
    root = tmp_path_factory.mktemp("temporary-server")
    home = root / "prefect-home"
    _local_build(root, home, "out", keep="0")
    return home


def test_without_prefect_api_url_the_flow_runs_on_a_temporary_server_that_stops(migrated_home):
    """No Prefect server configured and none kept (keep 0 s): the build's flow run is recorded
    in PREFECT_HOME's database (a new one, which its first start migrated) and the server is
    gone after."""
    assert _flow_runs(migrated_home) == [("build-dataset", "COMPLETED")]
    left = _processes_with_home(migrated_home)
    assert not left, f"processes of the build still running: {left}"


def test_a_kept_local_server_serves_the_next_build_and_stops_when_idle(tmp_path, migrated_home):
    """The default: the local server outlives the build; the next build with the same settings
    reports to it; a build with other Prefect settings starts its own, which replaces it (the
    first stops at once, no command using it), and that one stops after its idle seconds."""
    from pipelines import prefect_server

    home = tmp_path / "prefect-home"
    home.mkdir()
    for database in migrated_home.glob("prefect.db*"):
        shutil.copy(database, home)
    said = _local_build(tmp_path, home, "one", keep="60").stdout
    first = prefect_server.read_state(home)
    assert first is not None and running(first["pid"])
    assert f"Prefect: local server {first['url']} (pid {first['pid']}) kept" in said
    said = _local_build(tmp_path, home, "two", keep="60").stdout
    assert f"Prefect: reused local server {first['url']}" in said
    assert prefect_server.read_state(home) == first  # the same server, reused
    assert _flow_runs(home) == [("build-dataset", "COMPLETED")] * 3  # the copied one's too

    other = {"PREFECT_SERVER_API_KEEPALIVE_TIMEOUT": "6"}
    said = _local_build(tmp_path, home, "three", keep="1", **other).stdout
    second = int(re.search(r"Prefect: local server \S+ \(pid (\d+)\) kept", said)[1])
    assert second != first["pid"]
    assert _gone(first["pid"], within_s=30), "the replaced server kept running"
    assert _gone(second, within_s=30), "the idle server kept running"
    assert prefect_server.read_state(home) is None
    assert len(_flow_runs(home)) == 4


@pytest.mark.parametrize("keep", ["0", "60"])
def test_a_local_server_that_cannot_start_fails_the_build_with_its_error(tmp_path, keep):
    """A local Prefect server that exits before it answers (here: its database cannot be
    opened) ends the build with exit 1 and the server's own error, before any output exists."""
    home, out = tmp_path / "prefect-home", tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {
        "PREFECT_HOME": str(home),
        "GANFORGE_PREFECT_SERVER_KEEP_SECONDS": keep,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path}/none/x.db",
    }
    args = ["--num-images", "4", "--max-resolution", "8", "--out", str(out)]
    result = ganforge("data", "build", *args, env=env)
    assert result.returncode == 1
    assert "error: the local Prefect server exited before it answered" in result.stderr
    assert "unable to open database file" in result.stderr
    assert not out.exists()
    assert not _processes_with_home(home)
