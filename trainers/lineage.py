"""Where a run came from, as flat MLflow tags (str -> str): the code's git commit, the
dataset's manifest digest and DVC hash, the package versions and the cluster's shape.

Cheap (a few git subprocesses and two small files read) and light to import: no torch, ray
or mlflow, so a launcher can compute the tags before any of those load.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

import yaml

from trainers.data.storage import load_manifest
from trainers.files import is_url

UNKNOWN_COMMIT = "unknown"
UNTRACKED = "untracked"
DVC_LOCK_NAME = "dvc.lock"
VERSIONED_PACKAGES = ("torch", "ray", "mlflow", "prefect", "webdataset", "numpy", "ganforge")


def _git(directory: Path, *args: str) -> str | None:
    """Stripped stdout of `git -C directory args`; None where git or the repository is missing."""
    # --no-optional-locks: `git status` may otherwise take the index lock to refresh it, and
    # make a git command the user runs at the same moment fail.
    command = ["git", "--no-optional-locks", "-C", str(directory), *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_state(directory: Path) -> dict[str, str]:
    """HEAD's commit of the work tree holding directory, and whether tracked files differ
    from it (modified or staged; untracked files do not make a tree dirty)."""
    commit = _git(directory, "rev-parse", "HEAD")
    changes = _git(directory, "status", "--porcelain", "--untracked-files=no")
    if commit is None or changes is None:
        return {"ganforge.git.commit": UNKNOWN_COMMIT}
    return {"ganforge.git.commit": commit, "ganforge.git.dirty": "true" if changes else "false"}


def dvc_md5(folder: Path) -> str:
    """The md5 that the dvc.lock at the root of folder's git repository (else the working
    dir's dvc.lock) records for folder as a stage output; "untracked" where none does."""
    lock = Path(_git(folder, "rev-parse", "--show-toplevel") or ".") / DVC_LOCK_NAME
    if not lock.is_file():
        return UNTRACKED
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    target = folder.resolve()
    for stage in stages.values():
        for out in stage.get("outs", []):
            # out paths are relative to the dvc.lock's folder
            if (lock.parent / out["path"]).resolve() == target:
                return out["md5"]
    return UNTRACKED


def dataset_tags(data: str) -> dict[str, str]:
    """The dataset as given, its manifest digest, and the DVC md5 of its folder."""
    if is_url(data):  # remote (s3://): no local manifest or dvc.lock to read
        return {"ganforge.data.path": data, "ganforge.data.dvc_md5": UNTRACKED}
    folder = Path(data)
    return {
        "ganforge.data.path": data,
        "ganforge.data.digest": load_manifest(folder).digest(),
        "ganforge.data.dvc_md5": dvc_md5(folder),
    }


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run's results depend on, and Python's."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[f"ganforge.version.{name}"] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed (e.g. ganforge run from a bare checkout): nothing to record
    versions["ganforge.version.python"] = platform.python_version()
    return versions


def cluster_tags(nodes: int, workers: int, gpus_per_worker: int) -> dict[str, str]:
    return {
        "ganforge.cluster.nodes": str(nodes),
        "ganforge.cluster.workers": str(workers),
        "ganforge.cluster.gpus": str(workers * gpus_per_worker),
    }


def lineage_tags(data: str, directory: Path) -> dict[str, str]:
    """Every tag above that does not depend on the cluster: code, data and environment."""
    return git_state(directory) | dataset_tags(data) | package_versions()
