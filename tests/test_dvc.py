"""`dvc repro` in a fresh `git init` + `dvc init` repo: the committed lock reproduces, a second
run is a no-op, and a param change rebuilds."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import REPO
from trainers.data.format import load_manifest


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
