"""`ganforge pipeline run` end to end on a tiny config: a fresh `git init` + `dvc init` repo,
the real Prefect flow (on the test harness's API), training on the session's 2-node Ray
cluster, MLflow on SQLite; then a re-run that skips what did not change."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.configs import tiny_overrides
from tests.conftest import REPO, ganforge
from tests.services import prefect_server
from trainers.config import apply_overrides

FAMILIES = ("began", "progan")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory, subprocess_env, ray_address):
    """A user's checkout: dvc.yaml and the code it depends on, a 40-image params.yaml, tiny
    training presets and a pipeline config naming them."""
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    for code in ("pipelines", "trainers"):
        shutil.copytree(REPO / code, repo / code, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["build_dataset"] |= {"num_images": 40, "max_resolution": 32, "shard_size": 16}
    params["real_statistics"]["resolutions"] = [16, 32]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    presets = repo / "configs" / "train"
    presets.mkdir(parents=True)
    for family in FAMILIES:
        raw = yaml.safe_load((REPO / "configs" / "train" / f"{family}.yaml").read_text())
        tiny = apply_overrides(raw, [*tiny_overrides(family), "eval_every_kimg=0.384"])
        (presets / f"{family}.yaml").write_text(yaml.safe_dump(tiny))
    pipeline = {
        "trainings": [f"configs/train/{family}.yaml" for family in FAMILIES],
        "experiment": "pipeline-test",
        "samples": 4,
    }
    (repo / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))
    git("init", "-q", cwd=repo)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, env=subprocess_env, check=True)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "init", cwd=repo)
    tracking_uri = f"sqlite:///{repo.parent / 'mlflow.db'}"
    env = subprocess_env | {
        "RAY_ADDRESS": ray_address,
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_TRACKING_URI": tracking_uri,
    }
    return repo, env, tracking_uri


def run_pipeline(project):
    repo, env, _ = project
    result = ganforge("pipeline", "run", "pipeline.yaml", cwd=repo, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_pipeline_builds_trains_registers_promotes_then_a_rerun_skips_it_all(project):
    from mlflow import MlflowClient

    repo, _, tracking_uri = project
    output = run_pipeline(project)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("pipeline-test").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`mlflow.parentRunId` IS NULL")
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(run.data.params["model.family"] for run in children) == sorted(FAMILIES)

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (dataset_md5,) = [
        out["md5"]
        for out in lock["stages"]["build_dataset"]["outs"]
        if out["path"] == "data/quickstart"
    ]
    for family in FAMILIES:
        name = f"ganforge-{family}-quickstart-{32 if family == 'began' else 16}"
        champion = client.get_model_version_by_alias(name, "champion")
        assert str(champion.version) == "1"
        assert str(client.get_model_version_by_alias(name, "candidate").version) == "1"
        assert champion.tags["ganforge.gate_metric"] == "swd1k"
        assert champion.tags["ganforge.data.dvc_md5"] == dataset_md5  # lineage, from dvc.lock
        assert f"models:/{name}@champion" in output
        grid = next(line.strip() for line in output.splitlines() if f"{name}-v1.png" in line)
        assert Path(grid).read_bytes().startswith(b"\x89PNG")
        # the parent run holds each family's measurements side by side
        assert f"{family}/swd1k" in client.get_run(parent.info.run_id).data.metrics
    assert f"mlflow ui --backend-store-uri {tracking_uri}" in output

    again = run_pipeline(project)
    assert again.count("(unchanged: reused)") == len(FAMILIES)
    assert "already champion" in again
    assert len(client.search_runs([experiment], "tags.`mlflow.parentRunId` IS NOT NULL")) == 2
    assert len(client.search_model_versions("name LIKE 'ganforge-%'")) == len(FAMILIES)


def test_bad_pipeline_config_exits_2_naming_the_key(project):
    repo, env, _ = project
    (repo / "bad.yaml").write_text("trainings: [configs/train/began.yaml]\nfamilies: [x]\n")
    result = ganforge("pipeline", "run", "bad.yaml", cwd=repo, env=env)
    assert result.returncode == 2
    assert "families: unknown key; allowed: repro, trainings" in result.stderr


@pytest.mark.slow
def test_deployment_on_a_real_prefect_server_keeps_its_schedule_and_runs(project, tmp_path):
    """`ganforge pipeline deploy` against `prefect server start`: the schedule is stored, a
    triggered run is picked up by a real process worker and completes."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    repo, env, _ = project
    with prefect_server(tmp_path) as api:
        server_env = env | {"PREFECT_API_URL": api}
        bad = ganforge("pipeline", "deploy", "pipeline.yaml", "--cron", "nightly", cwd=repo,
                       env=server_env)  # fmt: skip
        assert bad.returncode == 2 and "--cron 'nightly'" in bad.stderr
        deployed = ganforge("pipeline", "deploy", "pipeline.yaml", "--cron", "30 2 * * 1",
                            "--name", "weekly", cwd=repo, env=server_env)  # fmt: skip
        assert deployed.returncode == 0, deployed.stderr
        with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name("ganforge-scheduled-pipeline/weekly")
            assert [s.schedule.cron for s in deployment.schedules] == ["30 2 * * 1"]
            assert deployment.work_pool_name == "ganforge"
            flow_run = client.create_flow_run_from_deployment(deployment.id)
            worker = subprocess.run(
                [str(Path(sys.executable).parent / "prefect"), "worker", "start",
                 "--pool", "ganforge", "--run-once"],
                cwd=repo, env=server_env, capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            state = client.read_flow_run(flow_run.id).state
        assert state.is_completed(), worker.stdout[-3000:] + worker.stderr[-3000:]
