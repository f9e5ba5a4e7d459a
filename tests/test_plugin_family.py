"""Adding a family touches nothing under trainers/ or pipelines/: a fourth family, defined in
tests/plugin_family/ (network, loss and family files, a preset) and registered through the
`ganforge.families` entry point, trains through `ganforge train` on the 2-node Ray cluster and
samples through `ganforge sample`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from tests.conftest import REPO, ganforge

PLUGIN = REPO / "tests" / "plugin_family"


def test_a_fourth_family_trains_through_ganforge_train(small_dataset, ray_address, subprocess_env,
                                                       tmp_path):  # fmt: skip
    mentions = subprocess.run(
        ["git", "grep", "-l", "tinyfam", "--", "trainers", "pipelines"], cwd=REPO,
        capture_output=True, text=True,
    )  # fmt: skip
    assert mentions.stdout == "", "the fourth family must need no edit of ganforge itself"
    work = tmp_path / "work"
    shutil.copytree(PLUGIN, work)  # the driver's folder: Ray puts it on its workers' sys.path
    env = subprocess_env | {
        "RAY_ADDRESS": ray_address,
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": os.pathsep.join([str(work), str(REPO)]),
    }
    storage = tmp_path / "runs"
    result = ganforge(
        "train", "tiny.yaml", "--data", str(small_dataset), "--run-name", "tiny",
        "--storage", str(storage), "--no-progress", cwd=work, env=env, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = sorted(p for p in (storage / "tiny").glob("checkpoint_*") if p.is_dir())
    assert checkpoints
    config = json.loads((checkpoints[-1] / "config.json").read_text())
    assert config["model"]["family"] == "tiny" and config["workers"] == 2
    progress = json.loads((checkpoints[-1] / "progress.json").read_text())
    assert progress["images"] == 128 and progress["best_gate_value"] is not None  # swd1k measured

    grid = tmp_path / "grid.png"
    sampled = ganforge("sample", "--checkpoint", str(checkpoints[-1]), "--num", "4", "--out",
                       str(grid), cwd=work, env=env)  # fmt: skip
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert grid.stat().st_size > 0

    unknown = ganforge("train", str(work / "tiny.yaml"), "--data", str(small_dataset),
                       cwd=tmp_path, env=subprocess_env)  # fmt: skip
    assert unknown.returncode == 2  # without the plugin on the path, "tiny" is no family
    assert "'wgan_gp', 'began', 'progan'" in unknown.stderr
