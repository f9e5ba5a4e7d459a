"""Lineage tags against real git repositories, a real built dataset and hand-written
dvc.lock files in DVC's format."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from trainers import lineage
from trainers.data.storage import load_manifest

DATA_MD5 = "0123456789abcdef0123456789abcdef.dir"


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def write_dvc_lock(folder: Path, out_path: str) -> None:
    """A dvc.lock as `dvc repro` writes it: a stage with out_path, and one with another out."""
    out = {"path": out_path, "hash": "md5", "md5": DATA_MD5, "size": 1234, "nfiles": 7}
    other = {"path": "data/other.stats", "hash": "md5", "md5": "f" * 32 + ".dir", "size": 1}
    lock = {
        "schema": "2.0",
        "stages": {
            "real_statistics": {"cmd": "ganforge data stats", "outs": [other]},
            "build_dataset": {"cmd": "ganforge data build", "deps": [], "outs": [out]},
        },
    }
    (folder / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))


@pytest.fixture
def no_outer_repo(tmp_path_factory, monkeypatch) -> None:
    """git must not find a repository above pytest's temp folders (say, a home under git)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path_factory.getbasetemp().parent))


@pytest.fixture
def repo(tmp_path, no_outer_repo) -> Path:
    """A git repository with one committed file."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "train.py").write_text("print('v1')\n")
    git(root, "add", "train.py")
    git(root, "commit", "-qm", "v1")
    return root


@pytest.fixture
def repo_with_data(repo, small_dataset) -> Path:
    """repo holding a copy of the small dataset at data/small."""
    shutil.copytree(small_dataset, repo / "data" / "small")
    return repo


def test_git_state_is_head_and_clean_after_commit(repo):
    state = lineage.git_state(repo)
    assert state == {
        "ganforge.git.commit": git(repo, "rev-parse", "HEAD"),
        "ganforge.git.dirty": "false",
    }
    assert len(state["ganforge.git.commit"]) == 40


def test_git_state_from_a_subfolder_is_the_work_tree_state(repo):
    (repo / "configs").mkdir()
    (repo / "train.py").write_text("print('v2')\n")
    assert lineage.git_state(repo / "configs")["ganforge.git.dirty"] == "true"


def test_untracked_file_leaves_tree_clean(repo):
    (repo / "notes.txt").write_text("scratch\n")
    assert lineage.git_state(repo)["ganforge.git.dirty"] == "false"


@pytest.mark.parametrize("stage", [False, True], ids=["modified", "staged"])
def test_changed_tracked_file_makes_tree_dirty(repo, stage):
    (repo / "train.py").write_text("print('v2')\n")
    if stage:
        git(repo, "add", "train.py")
    assert lineage.git_state(repo)["ganforge.git.dirty"] == "true"


def test_staged_new_file_makes_tree_dirty(repo):
    (repo / "loss.py").write_text("\n")
    git(repo, "add", "loss.py")
    assert lineage.git_state(repo)["ganforge.git.dirty"] == "true"


def test_outside_a_repository_commit_is_unknown(tmp_path, no_outer_repo):
    assert lineage.git_state(tmp_path) == {"ganforge.git.commit": "unknown"}


def test_without_git_commit_is_unknown(repo, monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert lineage.git_state(repo) == {"ganforge.git.commit": "unknown"}


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_dataset_tags_find_the_repository_dvc_lock(repo_with_data, tmp_path, monkeypatch, relative):
    write_dvc_lock(repo_with_data, "data/small")
    folder = repo_with_data / "data" / "small"
    # a relative path from the repository root; an absolute one from outside it
    monkeypatch.chdir(repo_with_data if relative else tmp_path)
    data = "data/small" if relative else str(folder)
    assert lineage.dataset_tags(data) == {
        "ganforge.data.path": data,
        "ganforge.data.digest": load_manifest(folder).digest(),
        "ganforge.data.dvc_md5": DATA_MD5,
    }


def test_dataset_not_in_a_dvc_lock_is_untracked(repo_with_data):
    folder = repo_with_data / "data" / "small"
    assert lineage.dataset_tags(str(folder))["ganforge.data.dvc_md5"] == "untracked"
    write_dvc_lock(repo_with_data, "data/other")
    assert lineage.dataset_tags(str(folder))["ganforge.data.dvc_md5"] == "untracked"


def test_dataset_outside_a_repository_uses_the_working_dir_dvc_lock(
    small_dataset, tmp_path, monkeypatch, no_outer_repo
):
    write_dvc_lock(tmp_path, os.path.relpath(small_dataset, tmp_path))
    monkeypatch.chdir(tmp_path)
    assert lineage.dataset_tags(str(small_dataset))["ganforge.data.dvc_md5"] == DATA_MD5


def test_remote_dataset_is_untracked_without_digest():
    assert lineage.dataset_tags("s3://bucket/faces") == {
        "ganforge.data.path": "s3://bucket/faces",
        "ganforge.data.dvc_md5": "untracked",
    }


def test_package_versions_are_the_installed_ones():
    import ray
    import torch

    versions = lineage.package_versions()
    assert versions["ganforge.version.torch"] == torch.__version__
    assert versions["ganforge.version.ray"] == ray.__version__
    assert versions["ganforge.version.python"] == ".".join(map(str, sys.version_info[:3]))


def test_package_versions_skip_a_package_not_installed(monkeypatch):
    monkeypatch.setattr(lineage, "VERSIONED_PACKAGES", ("numpy", "no-such-package-ganforge"))
    assert lineage.package_versions() == {
        "ganforge.version.numpy": importlib.metadata.version("numpy"),
        "ganforge.version.python": ".".join(map(str, sys.version_info[:3])),
    }


def test_cluster_gpus_are_workers_times_gpus_per_worker():
    assert lineage.cluster_tags(nodes=2, workers=4, gpus_per_worker=2) == {
        "ganforge.cluster.nodes": "2",
        "ganforge.cluster.workers": "4",
        "ganforge.cluster.gpus": "8",
    }


def test_lineage_tags_join_code_data_and_environment(repo_with_data):
    write_dvc_lock(repo_with_data, "data/small")
    tags = lineage.lineage_tags(str(repo_with_data / "data" / "small"), repo_with_data)
    assert tags["ganforge.git.commit"] == git(repo_with_data, "rev-parse", "HEAD")
    assert tags["ganforge.git.dirty"] == "false"  # the copied dataset and lock are untracked
    assert tags["ganforge.data.dvc_md5"] == DATA_MD5
    assert "ganforge.version.torch" in tags


def test_import_loads_no_torch_ray_or_mlflow():
    script = (
        "import sys, trainers.lineage; "
        "print([m for m in ('torch', 'ray', 'mlflow') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
