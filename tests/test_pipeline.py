"""`ganforge pipeline run` end to end on a tiny config: a fresh `git init` + `dvc init` repo,
the real Prefect flow (on the test harness's API), training on the session's 2-node Ray
cluster, MLflow on SQLite; then a re-run that trains only what changed. Both runs' console
output, summary and report (opened in headless Chromium) are checked."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.browser import chromium, install_chromium, page_url
from tests.configs import tiny_overrides
from tests.conftest import REPO, ganforge
from tests.console import assert_plain_console
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
    """`ganforge pipeline run` with its output in pipes (no terminal): stdout, stderr."""
    repo, env, _ = project
    result = ganforge("pipeline", "run", "pipeline.yaml", cwd=repo, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, result.stderr


@pytest.fixture(scope="module")
def pipeline_runs(project):
    """Two pipeline runs: the first trains and registers every family; before the second,
    BEGAN's preset changes (its seed), so the second trains BEGAN again (version 2, gated
    against the champion, version 1) and reuses ProGAN. Returns both runs' (stdout, stderr)."""
    repo, _, _ = project
    first = run_pipeline(project)
    preset = repo / "configs" / "train" / "began.yaml"
    preset.write_text(yaml.safe_dump(yaml.safe_load(preset.read_text()) | {"seed": 1}))
    git("commit", "-qam", "began: seed 1", cwd=repo)
    return first, run_pipeline(project)


def summary_rows(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows by family: [family, model URI, version, ..., grid path]."""
    return {
        line.split()[0]: line.split()
        for line in stdout.splitlines()
        if line.split() and line.split()[0] in FAMILIES
    }


def stages(stderr: str) -> list[str]:
    return [
        line.removeprefix("pipeline: ")
        for line in stderr.splitlines()
        if line.startswith("pipeline: ")
    ]


def test_pipeline_builds_trains_registers_promotes_then_a_rerun_trains_only_what_changed(
    project, pipeline_runs
):
    from mlflow import MlflowClient

    repo, _, tracking_uri = project
    (output, _), (again, _) = pipeline_runs
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("pipeline-test").experiment_id
    parents = client.search_runs(
        [experiment], "tags.`mlflow.parentRunId` IS NULL", order_by=["attributes.start_time"]
    )
    assert [parent.info.status for parent in parents] == ["FINISHED", "FINISHED"]
    children = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
    )
    assert sorted(run.data.params["model.family"] for run in children) == sorted(FAMILIES)

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    (dataset_md5,) = [
        out["md5"]
        for out in lock["stages"]["build_dataset"]["outs"]
        if out["path"] == "data/quickstart"
    ]
    rows = summary_rows(output)
    for family in FAMILIES:
        name = f"ganforge-{family}-quickstart-{32 if family == 'began' else 16}"
        version_1 = client.get_model_version(name, "1")
        assert version_1.tags["ganforge.gate_metric"] == "swd1k"
        assert version_1.tags["ganforge.data.dvc_md5"] == dataset_md5  # lineage, from dvc.lock
        assert f"models:/{name}@champion" in output
        assert rows[family][1:3] == [f"models:/{name}/1", "1"]
        assert "is now champion" in " ".join(rows[family])  # no champion before
        grid = Path(rows[family][-1])
        assert grid.name == f"{name}-v1.png" and grid.read_bytes().startswith(b"\x89PNG")
        # the parent run holds each family's measurements side by side
        assert f"{family}/swd1k" in client.get_run(parents[0].info.run_id).data.metrics
    assert f"mlflow ui --backend-store-uri {tracking_uri}" in output

    # the second run: BEGAN's changed preset trained again, ProGAN reused
    rows = summary_rows(again)
    assert rows["progan"][1:4] == [
        "(unchanged:",
        "reused)",
        "models:/ganforge-progan-quickstart-16/1",
    ]
    assert "is already champion" in " ".join(rows["progan"])
    assert rows["began"][1:3] == ["models:/ganforge-began-quickstart-32/2", "2"]
    champion = client.get_model_version_by_alias("ganforge-began-quickstart-32", "champion")
    promoted = "v2 is now champion" in " ".join(rows["began"])
    assert promoted or "does not beat champion v1" in " ".join(rows["began"])
    assert str(champion.version) == ("2" if promoted else "1")
    assert len(client.search_runs([experiment], "tags.`mlflow.parentRunId` IS NOT NULL")) == 3
    assert len(client.search_model_versions("name LIKE 'ganforge-%'")) == 3


def test_pipeline_shows_its_stages_then_a_summary_ending_with_the_model_uris(pipeline_runs):
    """Output to pipes: plain lines, no line twice; each stage named once, in order; a
    training's progress line and final line; then the table, the report, `mlflow ui` and the
    champion URIs, last."""
    (first_out, first_err), (again_out, again_err) = pipeline_runs
    assert_plain_console(first_err, trainings=2)
    assert_plain_console(again_err, trainings=1)
    assert [stage.split(" (")[0] for stage in stages(first_err)] == [
        "dataset", "real statistics",
        "training 1 of 2: began", "registration 1 of 2: began", "promotion 1 of 2: began",
        "training 2 of 2: progan", "registration 2 of 2: progan", "promotion 2 of 2: progan",
        "report",
    ]  # fmt: skip
    assert stages(again_err)[2:] == [
        "training 1 of 2: began", "registration 1 of 2: began", "promotion 1 of 2: began",
        "training 2 of 2: progan (unchanged: reused)", "promotion 2 of 2: progan", "report",
    ]  # fmt: skip
    assert re.search(r"^began 32² α 1\.00 kimg [\d.]+/0\.384 \d+ img/s ETA ", first_err, re.M)
    assert first_err.count("train.log") == 2  # each training's log file, named once
    for stdout in (first_out, again_out):
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        assert "\x1b" not in stdout
        header = next(i for i, line in enumerate(lines) if line.startswith("family"))
        assert lines[header].split() == ["family", "model", "URI", "version", "metrics", "gate",
                                         "decision", "grid"]  # fmt: skip
        assert lines[-5].startswith("report: ") and lines[-5].endswith("report.html")
        assert lines[-4].startswith("browse the runs: mlflow ui --backend-store-uri ")
        assert lines[-3] == "registered models:"
        assert lines[-2:] == [
            "models:/ganforge-began-quickstart-32@champion",
            "models:/ganforge-progan-quickstart-16@champion",
        ]


def report_of(stdout: str) -> Path:
    return Path(re.search(r"^report: (\S+)$", stdout, re.M)[1])


def test_report_is_an_artifact_of_the_parent_run_and_rebuilds_from_mlflow(
    project, pipeline_runs, tmp_path
):
    """The run folder's report.html is the parent run's artifact, and `ganforge report RUN_ID`
    rebuilds it byte for byte from MLflow (an id of no run: exit 2)."""
    from mlflow import MlflowClient

    repo, env, tracking_uri = project
    (_, _), (again, _) = pipeline_runs
    report = report_of(again)
    assert report.parent.parent == repo / "runs" and report.parent.name.startswith("pipeline-")
    run_id = re.search(r"\(MLflow run (\w+)\)", again)[1]
    logged = MlflowClient(tracking_uri).download_artifacts(run_id, "report.html", str(tmp_path))
    assert Path(logged).read_bytes() == report.read_bytes()
    rebuilt = ganforge("report", run_id, "--out", str(tmp_path / "rebuilt.html"), cwd=repo,
                       env=env, timeout=300)  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert (tmp_path / "rebuilt.html").read_bytes() == report.read_bytes()
    unknown = ganforge("report", "0" * 32, cwd=repo, env=env, timeout=300)
    assert unknown.returncode == 2 and f"no MLflow run '{'0' * 32}'" in unknown.stderr


# a page's own check of what the browser loaded, read back from the DOM Chromium dumps
LOAD_PROBE = """<script>
addEventListener("load", () => {
  const images = [...document.images];
  const loaded = (image) => image.complete && image.naturalWidth > 0;
  document.body.dataset.images = images.length;
  document.body.dataset.broken = images.filter((image) => !loaded(image)).length;
  document.body.dataset.curves = images.filter((i) => i.matches("img.curves") && loaded(i)).length;
});
</script>"""


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    binary, why_not = install_chromium()
    if binary is None:
        pytest.skip(why_not)
    return binary


def test_report_opens_in_headless_chromium(chromium_binary, pipeline_runs, tmp_path):
    """The second run's report, opened in a real browser: every image loaded, every family
    named with its curves, BEGAN's champion (v1) and candidate (v2) side by side; and a
    screenshot that is not blank."""
    from PIL import Image

    (_, _), (again, _) = pipeline_runs
    report = report_of(again)
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", LOAD_PROBE + "</body>"))
    dom = chromium(chromium_binary, "--virtual-time-budget=10000", "--dump-dom", page_url(probed))
    body = dict(re.findall(r'data-(images|broken|curves)="(\d+)"', dom))
    assert int(body["images"]) > 2 * len(FAMILIES) and body["broken"] == "0", body
    assert body["curves"] == str(len(FAMILIES))
    for family in FAMILIES:
        assert f"<h2>{family}</h2>" in dom
    began = dom[dom.index('<section id="began"') :]
    assert "champion before this run: v1" in began and "candidate: v2" in began
    shot = tmp_path / "report.png"
    chromium(chromium_binary, "--window-size=1280,2000", f"--screenshot={shot}", page_url(report))
    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        low, high = image.convert("L").getextrema()
        assert high - low > 100  # text and images, not an empty page


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


def test_a_retried_training_resumes_its_checkpoint_or_starts_afresh(tmp_path):
    """A pipeline's training retried after a failure: it resumes the checkpoint an earlier
    attempt left; an attempt that failed before its first checkpoint has its folder (and log)
    moved aside, so the launcher does not refuse the run name as taken."""
    from pipelines.end_to_end import resumable

    assert not resumable(tmp_path, "began-0123")  # never tried
    (tmp_path / "began-0123").mkdir()
    (tmp_path / "began-0123" / "train.log").write_text("the first attempt's failure\n")
    assert not resumable(tmp_path, "began-0123")
    assert not (tmp_path / "began-0123").exists()
    (aside,) = tmp_path.glob("began-0123.failed-*")
    assert (aside / "train.log").read_text() == "the first attempt's failure\n"
    (tmp_path / "began-0123" / "checkpoint_000000000384").mkdir(parents=True)
    assert resumable(tmp_path, "began-0123")
    assert (tmp_path / "began-0123").exists()
