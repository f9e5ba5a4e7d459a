"""Shared fixtures: one Prefect test server per session, small datasets built once."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from trainers.data.storage import S3Url

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# a command without PREFECT_API_URL stops its local Prefect server when it ends, so no test
# leaves one behind; test_cli's kept-server test sets its own keeping
os.environ["GANFORGE_PREFECT_SERVER_KEEP_SECONDS"] = "0"
# no test downloads the 95 MB Inception weights: FID is skipped (with its warning) unless a
# test supplies a weights file
os.environ["GANFORGE_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """Prefect's own test harness (a real API server on a temp SQLite database).

    Yields its URL so subprocesses (`ganforge`, `dvc repro`) can use the same server
    instead of each starting an ephemeral one.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def subprocess_env(prefect_api: str) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return os.environ | {"PREFECT_API_URL": prefect_api, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.fixture(scope="session")
def s3_env():
    """A real S3 endpoint on 127.0.0.1 (moto in server mode, reachable from subprocesses and
    loader processes) with dummy credentials, which boto3's chain takes before any in ~/.aws. Set
    in this process's environment for the session (restored after); yields those variables to
    add to a subprocess's env."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    variables = {
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "ganforge-test-key-id",
        "AWS_SECRET_ACCESS_KEY": "ganforge-test-secret-d41d8cd98f00b204e980",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    yield variables
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.stop()


def ganforge(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, **kw):
    """Run the real console script, as a user would."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "ganforge"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        **kw,
    )


def spools(out: Path | str, done_glob: str) -> list[str]:
    """Names of a build's spool files matching done_glob, in a folder or under s3://."""
    from fnmatch import fnmatch

    from pipelines.dataset.flow import WORK_DIR_NAME
    from trainers.data.storage import dataset_at

    found = dataset_at(out).files([WORK_DIR_NAME])
    return [name for name in found if fnmatch(name, f"{WORK_DIR_NAME}/{done_glob}")]


def kill_build_when(args: list[str], out: Path | str, done_glob: str, env: dict[str, str]) -> None:
    """Start `ganforge <args> --out OUT` and SIGKILL it, pool workers included, as soon as its
    spool folder (or prefix) holds a file matching done_glob (some work done, the build not
    finished)."""
    from trainers.data.storage import dataset_at

    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "ganforge"), *args, "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not spools(out, done_glob):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the whole group: the CLI and its pool workers
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert "manifest.json" not in dataset_at(out).files([""])


def build(out: Path | str, **options):
    """Run the build flow in-process (against the session's Prefect test server) on a local
    pool of `workers`."""
    from pipelines.dataset.config import BuildDatasetConfig
    from pipelines.dataset.flow import build_dataset

    workers = options.pop("workers", 1)
    return build_dataset(BuildDatasetConfig(out=out, **options), workers=workers)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def s3_objects(root: S3Url) -> dict[str, bytes]:
    """Name (under the S3Url root) -> bytes of every object there, as tree_bytes of a folder."""
    from trainers.data.storage import S3Dataset

    dataset = S3Dataset(root)
    return {name: dataset.read(name) for name in sorted(dataset.files([""]))}


@pytest.fixture(scope="session")
def small_dataset(prefect_api, tmp_path_factory) -> Path:
    """40 synthetic faces up to 32², 3 shards of 16/16/8 per resolution."""
    out = tmp_path_factory.mktemp("datasets") / "small"
    build(out, num_images=40, max_resolution=32, shard_size=16, seed=3, workers=2)
    return out


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, s3_env):
    """One Ray cluster of two nodes (two raylets, 1 CPU each, so two training workers land on
    two node ids) shared by every `ganforge train` and cluster build of the session through
    RAY_ADDRESS; its own port, since Redis may hold Ray's default. Its nodes reach the
    session's S3 (s3_env is in their environment), as a real cluster's reach theirs. A test
    that kills a node restores it after."""
    from tests.cluster import LocalCluster

    cluster = LocalCluster(tmp_path_factory.mktemp("ray")).start(nodes=2)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def ray_address(ray_cluster) -> str:
    return ray_cluster.address
