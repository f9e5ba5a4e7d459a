"""`dvc repro` in a fresh `git init` + `dvc init` repo: the committed lock reproduces, a second
run is a no-op, and a param change rebuilds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import REPO, tree_bytes
from trainers.data.storage import load_manifest


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd}: {result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_dvc_repro_reproduces_lock_then_noop_then_rebuilds(subprocess_env, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "dvc.lock", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    for code in ("pipelines", "trainers"):
        shutil.copytree(REPO / code, repo / code, ignore=shutil.ignore_patterns("__pycache__"))
    env = subprocess_env
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo, env)

    # The committed dvc.lock is reproduced exactly on this machine: same output hashes.
    run(["dvc", "repro"], repo, env)
    assert run(["git", "status", "--porcelain", "dvc.lock"], repo, env) == ""
    manifest = repo / "data/quickstart/manifest.json"
    built = manifest.stat().st_mtime_ns

    assert "didn't change" in run(["dvc", "repro"], repo, env)
    assert manifest.stat().st_mtime_ns == built
    assert "up to date" in run(["dvc", "status"], repo, env)

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["build_dataset"]["num_images"] = 48
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "Running stage 'build_dataset'" in run(["dvc", "repro"], repo, env)
    assert load_manifest(repo / "data/quickstart").counts.accepted == 48
    assert "up to date" in run(["dvc", "status"], repo, env)


def test_dvc_remote_on_s3_push_pull_and_repro_pull_restores_without_rebuilding(
    subprocess_env, s3_env, tmp_path
):
    """A default DVC remote on S3 (moto): `dvc push` uploads the outputs, and on a fresh clone
    (no data, no cache) `dvc repro --pull` restores them instead of running the stages, as does
    `dvc pull`. The remote's URL is committed; its endpoint is not: DVC's s3fs client takes
    AWS_ENDPOINT_URL_S3 from the environment like boto3 does."""
    import boto3

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / ".dvcignore", repo / ".dvcignore")
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    for code in ("pipelines", "trainers"):
        shutil.copytree(REPO / code, repo / code, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # shrunk: not the committed lock
    params["build_dataset"] |= {"num_images": 40, "max_resolution": 16, "shard_size": 16}
    params["real_statistics"]["resolutions"] = [16]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = subprocess_env | s3_env
    git_commit = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm"]
    boto3.client("s3").create_bucket(Bucket="ganforge-dvc")
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["dvc", "remote", "add", "-d", "storage", "s3://ganforge-dvc/dvc"], repo, env)
    run(["dvc", "repro"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run([*git_commit, "pipeline, lock and remote"], repo, env)

    run(["dvc", "push"], repo, env)
    pushed = boto3.client("s3").list_objects_v2(Bucket="ganforge-dvc", Prefix="dvc/")
    assert pushed["KeyCount"] > 0
    assert all(o["Key"].startswith("dvc/files/md5/") for o in pushed["Contents"])
    outputs = {out: tree_bytes(repo / out) for out in ("data/quickstart", "data/quickstart.stats")}

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "data/quickstart").exists() and not (clone / ".dvc/cache").exists()
    out = run(["dvc", "repro", "--pull"], clone, env)
    assert "Running stage" not in out, out
    assert {o: tree_bytes(clone / o) for o in outputs} == outputs
    assert "up to date" in run(["dvc", "status"], clone, env)

    other = tmp_path / "other"
    run(["git", "clone", "-q", str(repo), str(other)], tmp_path, env)
    run(["dvc", "pull"], other, env)
    assert {o: tree_bytes(other / o) for o in outputs} == outputs
