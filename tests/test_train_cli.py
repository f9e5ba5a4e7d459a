"""`ganforge train` as users type it: config errors before any worker starts, and short real
runs of every family on a local Ray cluster of two nodes (one worker each), checked through
what MLflow recorded; a lost worker and a lost node are survived."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.cluster import processes_titled
from tests.configs import tiny_overrides
from tests.conftest import REPO, ganforge
from tests.console import assert_plain_console
from trainers.config import load_train_config
from trainers.data.storage import load_manifest

PRESETS = sorted((REPO / "configs" / "train").rglob("*.yaml"))
QUICKSTART = REPO / "configs" / "train"
GANFORGE = Path(sys.executable).parent / "ganforge"


def sets(*overrides: str) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: str(p.relative_to(QUICKSTART)))
def test_every_preset_validates_and_splits_its_batches(preset):
    config = load_train_config(preset)
    for resolution in config.resolutions:
        assert config.batch_per_worker(resolution, config.workers) >= 1


def test_paper_progan_preset_grows_to_1024():
    config = load_train_config(QUICKSTART / "paper" / "progan.yaml")
    assert config.resolutions == [4, 8, 16, 32, 64, 128, 256, 512, 1024]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (sets("model.fade_kmg=3"), "model.fade_kmg: unknown key; allowed: family, resolution"),
        (sets("sede=1"), "sede: unknown key; allowed: model, data, seed"),
        (sets("total_kimg=-1"), "total_kimg: Input should be greater than 0"),
        (sets("model.family=gan"), "does not match any of the expected tags"),
        (sets("model.resolution=48"), "model.resolution: must be a power of two"),
        (sets("batch_per_resolution={4: 8}"), "no entry for resolution 8"),
        (sets("seed"), "expected key=value"),
        (["--workers", "3"], "batch_per_resolution[4] = 16 does not split over 3 workers"),
        (
            ["--workers", "4", "--set", "min_workers=3"],
            "min_workers=3: batch_per_resolution[4] = 16 does not split over 3 workers",
        ),
        (["--workers", "2", "--set", "min_workers=3"], "min_workers 3 is above workers 2"),
    ],
)
def test_config_errors_exit_2_naming_the_key(args, named, small_dataset, tmp_path):
    result = ganforge(
        "train",
        str(QUICKSTART / "progan.yaml"),
        "--data",
        str(small_dataset),
        *sets("model.resolution=16"),
        *args,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_dataset_exits_2_naming_the_build_command(tmp_path):
    result = ganforge("train", str(QUICKSTART / "wgan_gp.yaml"), "--data", "nowhere", cwd=tmp_path)
    assert result.returncode == 2
    assert "no dataset at nowhere" in result.stderr
    assert "ganforge data build --out nowhere --max-resolution 32" in result.stderr


def test_missing_resolution_exits_2_naming_it(small_dataset, tmp_path):
    result = ganforge(
        "train",
        str(QUICKSTART / "began.yaml"),
        "--data",
        str(small_dataset),
        *sets("model.resolution=64", "batch_per_resolution={64: 16}"),
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "no shards at resolution [64]" in result.stderr
    assert "--max-resolution 64" in result.stderr


# -- real runs on Ray -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_client(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return MlflowClient(f"sqlite:///{store}"), f"sqlite:///{store}"


def train(family, run_name, workdir, env, *extra):
    return ganforge(
        "train",
        str(QUICKSTART / f"{family}.yaml"),
        *sets(*tiny_overrides(family)),
        "--run-name",
        run_name,
        "--no-progress",
        *extra,
        cwd=workdir,
        env=env,
        timeout=600,
    )


def run_log(workdir: Path, run_name: str) -> str:
    """The run's train.log: every rank's log records and the launcher's."""
    return (workdir / "runs" / run_name / "train.log").read_text()


@pytest.fixture(scope="module")
def train_env(ray_address, subprocess_env, mlflow_client):
    return subprocess_env | {
        "RAY_ADDRESS": ray_address,
        "RAY_AUTH_MODE": "disabled",
        "MLFLOW_TRACKING_URI": mlflow_client[1],
    }


def run_by_name(client, name):
    (run,) = client.search_runs(
        [client.get_experiment_by_name("ganforge").experiment_id],
        filter_string=f"attributes.run_name = '{name}'",
    )
    return run


def history(client, run, key):
    return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]


FAMILY_METRICS = {
    "wgan_gp": {"D/wasserstein", "D/gradient_penalty", "D/loss", "G/loss"},
    "began": {"k_t", "m_global_batch", "D/reconstruction_real", "D/reconstruction_fake", "G/loss"},
    "progan": {"D/wasserstein", "D/gradient_penalty", "D/drift", "G/loss"},
}


@pytest.mark.parametrize("family", ["began", "progan"])
def test_family_trains_on_two_ray_workers_and_logs_to_mlflow(
    family, small_dataset, train_env, mlflow_client, tmp_path
):
    client, _ = mlflow_client
    console = tmp_path / "console.txt"  # stdout and stderr, as `ganforge train > file 2>&1`
    with console.open("w") as output:
        result = subprocess.run(
            [str(GANFORGE), "train", str(QUICKSTART / f"{family}.yaml"),
             *sets(*tiny_overrides(family)), "--run-name", f"{family}-e2e",
             "--data", str(small_dataset)],
            cwd=tmp_path, env=train_env, stdout=output, stderr=subprocess.STDOUT, timeout=600,
        )  # fmt: skip
    text = console.read_text()
    assert result.returncode == 0, text[-3000:]
    # the driver's display: rank 0's progress (the first report is shown at once), one final
    # line; every rank's log records in the run's log file, whose path is printed once
    assert_plain_console(text, trainings=1)
    progress = rf"^{family} \d+² α [01]\.\d\d kimg [\d.]+/0\.384 \d+ img/s ETA \d+:\d\d:\d\d$"
    assert re.search(progress, text, re.MULTILINE), text[-3000:]
    assert text.count("train.log") == 1
    assert re.search(rf"^{family} finished at kimg 0\.384 in \d+:\d\d:\d\d", text, re.MULTILINE)
    records = run_log(tmp_path, f"{family}-e2e")
    assert " rank 0 INFO trainers." in records and " rank 1 INFO " in records
    run = run_by_name(client, f"{family}-e2e")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.family"] == family
    assert run.data.params["workers"] == "2"
    nodes = json.loads(run.data.tags["ganforge.nodes"])  # the node id of each rank
    assert len(nodes) == 2 and nodes[0] != nodes[1]
    # lineage: the code's commit, the dataset version, the cluster shape, package versions
    tags = run.data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    assert tags["ganforge.git.commit"] == head.stdout.strip()
    assert tags["ganforge.git.dirty"] in ("true", "false")
    assert tags["ganforge.data.digest"] == load_manifest(small_dataset).digest()
    assert tags["ganforge.data.dvc_md5"] == "untracked"  # a test dataset, not a DVC output
    cluster = {"nodes": "2", "workers": "2", "gpus": "0"}
    assert {k: tags[f"ganforge.cluster.{k}"] for k in cluster} == cluster
    assert tags["ganforge.version.torch"] == torch.__version__
    common = {"kimg", "images_per_second", "seconds_per_kimg", "resolution", "global_batch"}
    assert FAMILY_METRICS[family] | common <= set(run.data.metrics)
    assert run.data.metrics["kimg"] == pytest.approx(0.384)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "samples", "checkpoint"} <= artifacts
    samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert len(samples) == 3  # kimg 0, 0.192, 0.384
    if family == "progan":
        resolutions = [value for _, value in history(client, run, "resolution")]
        assert resolutions == sorted(resolutions) and set(resolutions) == {4, 8, 16}
        alphas = [value for _, value in history(client, run, "fade_alpha")]
        assert any(0 < a < 1 for a in alphas)
        assert {v for _, v in history(client, run, "global_batch")} == {16}
    if family == "began":
        assert all(0 <= k <= 1 for _, k in history(client, run, "k_t"))
    # the preset's metrics, measured over both ranks at the end (at 16² for ProGAN's tiny run:
    # one pyramid level); the first ranks the checkpoints and Ray keeps the best
    measured = {"swd1k", "m_global"} if family == "began" else {"swd1k", "swd1k_16"}
    assert measured <= set(run.data.metrics)
    assert run.data.tags["ganforge.gate_metric"] == "swd1k"
    assert run.data.tags["ganforge.best_kimg"] == "0.384"
    assert "best checkpoint" in text
    # Ray's checkpoint folders are named by the images shown, as DirectorySession's
    assert re.search(r"; checkpoint \S+/checkpoint_000000000384;", text), text[-3000:]
    if family == "began":  # `ganforge evaluate` of that checkpoint measures what training did
        best = re.search(r"best checkpoint (\S+)", text)[1]
        out = tmp_path / "metrics.json"
        evaluated = ganforge(
            "evaluate", "--checkpoint", best, "--out", str(out), env=train_env, timeout=300
        )
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        logged = {k: run.data.metrics[k] for k in ("swd1k", "swd1k_32", "swd1k_16", "m_global")}
        assert json.loads(out.read_text())["metrics"] == pytest.approx(logged, rel=1e-6)


def test_without_ray_address_a_local_cluster_is_started(small_dataset, train_env, tmp_path):
    """The default a user gets: no RAY_ADDRESS, so the launcher starts its own local Ray (with
    the lean trainer that leaves out the helper actors it does not need) and logs the launch
    timeline `make bench` splits. One worker holding both CPUs (cpus_per_worker: 2, as the
    BEGAN preset on a 2-core machine) runs torch on two threads."""
    env = {k: v for k, v in train_env.items() if k != "RAY_ADDRESS"}
    one_worker = ["--workers", "1", "--set", "cpus_per_worker=2"]
    result = train("wgan_gp", "local", tmp_path, env, "--data", str(small_dataset), *one_worker)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "to kimg 0.384" in result.stdout
    marks = ["Ray ready (local cluster) at", "train function entered at", "first step done at"]
    output = run_log(tmp_path, "local")
    assert "torch threads per worker: 2" in output
    times = [float(re.search(re.escape(mark) + r" (\d+\.\d+)", output).group(1)) for mark in marks]
    assert times == sorted(times)


def test_more_cpus_than_the_local_cluster_has_are_refused(small_dataset, train_env, tmp_path):
    """Workers asking for more CPUs than this machine's Ray has would wait for them forever:
    refused (exit 2) once Ray has started and said how many it has, before any checkpoint."""
    env = {k: v for k, v in train_env.items() if k != "RAY_ADDRESS"}
    big = ["--workers", "1", "--set", "cpus_per_worker=64"]
    result = train("began", "greedy", tmp_path, env, "--data", str(small_dataset), *big)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "workers=1 x cpus_per_worker=64 CPUs, and this machine's Ray has" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "runs").glob("greedy/checkpoint_*"))


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_resume_continues_the_same_mlflow_run(
    storage, small_dataset, train_env, mlflow_client, request, tmp_path
):
    """--max-kimg stops with a checkpoint; --resume continues from there in the same MLflow run,
    kimg going on (not restarting at 0); a second start without --resume is refused. With
    --storage s3://… Ray writes the checkpoints to S3 (moto) and the resume reads them back."""
    client, _ = mlflow_client
    name, env, extra = f"resumable-{storage}", train_env, ["--data", str(small_dataset)]
    if storage == "s3":
        import boto3

        # local Ray started by the command, so its workers get this S3 endpoint and keys
        env = {k: v for k, v in train_env.items() if k != "RAY_ADDRESS"}
        env |= request.getfixturevalue("s3_env")
        boto3.client("s3").create_bucket(Bucket="ganforge-runs")
        extra += ["--storage", "s3://ganforge-runs/runs"]
    first = train("wgan_gp", name, tmp_path, env, *extra, "--max-kimg", "0.192")
    assert first.returncode == 0, first.stderr[-3000:]
    again = train("wgan_gp", name, tmp_path, env, *extra)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    second = train("wgan_gp", name, tmp_path, env, *extra, "--resume")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "to kimg 0.384" in second.stdout
    if storage == "s3":
        assert f"checkpoint s3://ganforge-runs/runs/{name}/checkpoint_" in second.stdout
        listed = boto3.client("s3").list_objects_v2(Bucket="ganforge-runs", Prefix="runs/")
        states = [o["Key"] for o in listed["Contents"] if o["Key"].endswith("/state.pt")]
        assert len(states) == 2  # kimg 0.192 and 0.384 (checkpoints_to_keep: 2)
        assert not (tmp_path / "runs").exists()
        # the keys came from the environment and went nowhere: not in any output, not in
        # MLflow's store (params, tags, artifacts' records), not in a file the runs wrote
        secret = env["AWS_SECRET_ACCESS_KEY"].encode()
        written = [mlflow_client[1].removeprefix("sqlite:///"), *tmp_path.rglob("*")]
        for output in (first, again, second):
            assert secret not in (output.stdout + output.stderr).encode()
        assert not [p for p in map(Path, written) if p.is_file() and secret in p.read_bytes()]
    run = run_by_name(client, name)  # one run: the resume did not open another
    assert run.info.status == "FINISHED"
    assert FAMILY_METRICS["wgan_gp"] <= set(run.data.metrics)
    steps = [step for step, _ in history(client, run, "kimg")]
    assert steps == sorted(steps) and steps[0] == 64 and steps[-1] == 384
    assert len(steps) == len(set(steps)) == 6


def _train_worker_pids(cluster) -> list[int]:
    """The Ray Train worker processes (Ray titles them ray::RayTrainWorker...) on `cluster`."""
    return processes_titled(b"RayTrainWorker", set(cluster.raylets))


def _wait_for(predicate, process, what: str, log: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the run ended before {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.1)


def _long_overrides(*extra: str) -> list[str]:
    """A wgan_gp run long enough to be interrupted after its first checkpoints (every 0.32
    kimg), with one restart allowed."""
    return [
        *tiny_overrides("wgan_gp"),
        "sample_every_kimg=100",
        "checkpoint_every_kimg=0.32",
        "max_failures=1",
        *extra,
    ]


@contextlib.contextmanager
def _past_first_checkpoint(run_name: str, overrides: list[str], dataset: Path, cwd: Path, env):
    """`ganforge train` of `overrides` in the background, its output in cwd/output.log; yields
    the process once Ray has committed the first checkpoint (the second's folder appears then),
    and kills it on the way out."""
    command = [
        str(GANFORGE), "train", str(QUICKSTART / "wgan_gp.yaml"), *sets(*overrides),
        "--run-name", run_name, "--no-progress", "--data", str(dataset),
    ]  # fmt: skip
    log, run_dir = cwd / "output.log", cwd / "runs" / run_name
    with open(log, "w") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=output, text=True
        )
        try:
            _wait_for(
                lambda: len(list(run_dir.glob("checkpoint_*"))) > 1, process, "checkpoint", log
            )
            yield process
        finally:
            process.kill()


def test_killed_worker_restarts_from_checkpoint_then_exhausted_failures_exit_1(
    small_dataset, train_env, mlflow_client, ray_cluster, tmp_path
):
    """max_failures=1: a SIGKILLed worker restarts the group from the latest checkpoint
    (kimg resumes there); a second kill exhausts it, exit 1 names the checkpoint and the
    --resume command; resuming finishes the requested kimg in the same MLflow run."""
    client, _ = mlflow_client
    overrides = _long_overrides("total_kimg=4.8")
    log = tmp_path / "output.log"
    with _past_first_checkpoint("survivor", overrides, small_dataset, tmp_path, train_env) as run:
        os.kill(_train_worker_pids(ray_cluster)[-1], signal.SIGKILL)
        _wait_for(lambda: "resumed at kimg" in run_log(tmp_path, "survivor"), run, "restart", log)
        _wait_for(lambda: len(_train_worker_pids(ray_cluster)) == 2, run, "restarted workers", log)
        os.kill(_train_worker_pids(ray_cluster)[-1], signal.SIGKILL)
        assert run.wait(timeout=300) == 1
    output = log.read_text()
    assert_plain_console(output, trainings=1)  # its final line says it failed
    records = run_log(tmp_path, "survivor")
    resumed_at = float(re.search(r"resumed at kimg (\d+\.\d+)", records).group(1))
    assert resumed_at > 0 and (resumed_at / 0.32) == pytest.approx(round(resumed_at / 0.32))
    assert "max_failures=1 restarts used up" in output and "--run-name survivor" in output
    assert "--resume" in output and "checkpoint_" in output

    resumed = train("wgan_gp", "survivor", tmp_path, train_env, "--data", str(small_dataset),
                    *sets(*overrides), "--resume")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "to kimg 4.800" in resumed.stdout
    run = run_by_name(client, "survivor")
    assert run.info.status == "FINISHED"
    steps = [step for step, _ in history(client, run, "kimg")]
    assert steps == sorted(set(steps)) and steps[-1] == 4800  # no step logged twice


def test_lost_node_resumes_on_the_remaining_one_with_the_same_global_batch(
    small_dataset, train_env, mlflow_client, ray_cluster, tmp_path
):
    """Elastic sizing (min_workers=1): SIGKILL the raylet (and its workers) of the node that
    holds one rank, as a lost host; the run restarts from its latest checkpoint on the
    remaining node with one worker taking the whole global batch (logged), and finishes in
    the same MLflow run."""
    client, _ = mlflow_client
    overrides = _long_overrides("total_kimg=4.8", "min_workers=1")
    log = tmp_path / "output.log"
    head = ray_cluster.raylets[0]
    # Right after the loss the cluster still lists the lost node's CPU for a moment, so Ray
    # Train first tries 2 workers again and waits this long (default 60 s) before it takes 1.
    env = train_env | {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"}
    try:
        with _past_first_checkpoint("elastic", overrides, small_dataset, tmp_path, env) as run:
            ours = _train_worker_pids(ray_cluster)
            raylets = {ray_cluster.raylet_of(pid) for pid in ours}
            assert len(raylets) == 2 and head in raylets  # one rank per node
            (lost,) = raylets - {head}
            assert run.poll() is None, "the run ended before its node could be lost"
            ray_cluster.kill_raylet(lost)
            assert run.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        ray_cluster.ensure_nodes(2)  # the next tests find two nodes again
    text = log.read_text()
    assert "to kimg 4.800" in text
    # rank 0's warning reaches the console once (its worker's output is not forwarded by the
    # log monitors of both raylets), and training goes on showing one final line
    assert_plain_console(text, trainings=1)
    assert text.count("elastic resize:") == 1
    resize = re.search(r"elastic resize: .* written by 2 workers, training goes on with 1", text)
    assert resize, text[-3000:]
    assert "global batch at 32² stays 16 (per worker 8 -> 16)" in text
    run = run_by_name(client, "elastic")
    assert run.info.status == "FINISHED"
    steps = [step for step, _ in history(client, run, "kimg")]
    assert steps == sorted(set(steps)) and steps[-1] == 4800
    workers = [value for _, value in history(client, run, "workers")]
    assert workers[0] == 2 and workers[-1] == 1 and workers == sorted(workers, reverse=True)
    assert {value for _, value in history(client, run, "global_batch")} == {16}
