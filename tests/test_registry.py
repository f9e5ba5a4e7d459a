"""The MLflow model registry on a real SQLite store: a trained generator registered and loaded
back ready to sample, `ganforge sample` and `evaluate` from the registry, the promotion gate."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.registry import CANDIDATE, CHAMPION, GATE_VALUE_TAG, register_generator
from tests.configs import tiny_config
from tests.conftest import ganforge
from tests.services import mlflow_server, pg_user, psql
from trainers.checkpoint import read_progress, write_progress
from trainers.loop import DirectorySession, RunOptions, Trainer
from trainers.sampling import Sampler
from trainers.tracking import GATE_METRIC_TAG, experiment_id

NAME = "ganforge-progan-small-16"


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory):
    """A tiny ProGAN trained in-process to 16², logging to MLflow with swd1k at the end."""
    root = tmp_path_factory.mktemp("registry")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    config = tiny_config(small_dataset, "progan", metrics=["swd1k"])
    options = RunOptions(tracking_uri=tracking_uri, run_name="registry")
    trainer = Trainer(config, options, DirectorySession(root / "run"))
    trainer.run()
    trainer.close()
    checkpoint = DirectorySession(root / "run").checkpoints()[-1]
    return tracking_uri, checkpoint, read_progress(checkpoint)


@pytest.fixture(scope="module")
def client(trained):
    from mlflow import MlflowClient

    return MlflowClient(trained[0])


@pytest.fixture(scope="module")
def first_release(trained):
    tracking_uri, checkpoint, progress = trained
    return register_generator(checkpoint, progress.mlflow_run_id, tracking_uri)


def env_for(tracking_uri: str) -> dict[str, str]:
    import os

    return os.environ | {"MLFLOW_TRACKING_URI": tracking_uri, "GANFORGE_OFFLINE": "1"}


def test_registered_generator_loads_ready_to_call_on_latents(
    trained, client, first_release, monkeypatch
):
    import mlflow.pytorch
    from mlflow.models import get_model_info

    tracking_uri, checkpoint, progress = trained
    assert first_release.name == NAME and first_release.version == "1"
    version = client.get_model_version_by_alias(NAME, CANDIDATE)
    assert str(version.version) == "1" and version.run_id == progress.mlflow_run_id
    # what the run logged at the checkpoint's step is what the checkpoint recorded
    logged = client.get_metric_history(progress.mlflow_run_id, "swd1k")[-1]
    assert logged.step == progress.images and logged.value == progress.metrics["swd1k"]
    assert progress.gate_metric == version.tags[GATE_METRIC_TAG] == "swd1k"
    assert float(version.tags[GATE_VALUE_TAG]) == logged.value == first_release.gate_value
    assert float(version.tags["metric.swd1k_16"]) == progress.metrics["swd1k_16"]
    assert float(version.tags["ganforge.kimg"]) == pytest.approx(progress.kimg)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    uri = f"models:/{NAME}@{CANDIDATE}"
    info = get_model_info(uri)
    sampler = Sampler.from_checkpoint(checkpoint)  # G_ema: ProGAN's
    latent_dim = sampler.prior.latent_dim
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, latent_dim)
    model = mlflow.pytorch.load_model(uri)
    latents = sampler.latents(5, seed=1)
    expected = sampler(latents)
    with torch.no_grad():
        images = model(latents)
    assert images.shape == (5, 3, 16, 16)
    assert torch.allclose(images, expected, atol=1e-5)


def test_sample_and_evaluate_from_the_registry_match_the_checkpoint(
    trained, first_release, tmp_path
):
    tracking_uri, checkpoint, _ = trained
    env = env_for(tracking_uri)
    uri = f"models:/{NAME}@{CANDIDATE}"
    grids = {}
    for kind, source in (("model", uri), ("checkpoint", str(checkpoint))):
        out = tmp_path / f"{kind}.png"
        result = ganforge("sample", f"--{kind}", source, "--num", "9", "--seed", "4", "--out",
                          str(out), env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        grids[kind] = np.asarray(Image.open(out), dtype=np.int16)
    assert grids["model"].shape == (3 * 65 + 1, 3 * 65 + 1, 3)  # 16² cells enlarged to 64²
    assert np.abs(grids["model"] - grids["checkpoint"]).max() <= 1  # rounding to 8 bits

    other = ganforge("sample", "--model", uri, "--seed", "5", "--num", "9", "--out",
                     str(tmp_path / "other.png"), env=env)  # fmt: skip
    assert other.returncode == 0
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "other.png")), grids["model"])

    scores = {}
    for kind, source in (("model", uri), ("checkpoint", str(checkpoint))):
        out = tmp_path / f"new-{kind}" / "metrics.json"  # its folder does not exist yet
        result = ganforge("evaluate", f"--{kind}", source, "--metrics", "swd1k", "--out",
                          str(out), env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr
        scores[kind] = dict(line.split() for line in result.stdout.splitlines())
        written = json.loads(out.read_text())["metrics"]["swd1k"]
        assert written == pytest.approx(float(scores[kind]["swd1k"]), rel=1e-5)  # printed: 6 digits
    assert float(scores["model"]["swd1k"]) == pytest.approx(float(scores["checkpoint"]["swd1k"]))


def test_unknown_model_or_both_sources_exit_2(trained, tmp_path):
    env = env_for(trained[0])
    missing = ganforge("sample", "--model", f"models:/{NAME}-nope@{CHAMPION}", "--out",
                       str(tmp_path / "g.png"), env=env)  # fmt: skip
    assert missing.returncode == 2 and "nope" in missing.stderr
    both = ganforge("sample", "--model", "models:/x/1", "--checkpoint", str(trained[1]), "--out",
                    str(tmp_path / "g.png"), env=env)  # fmt: skip
    assert both.returncode == 2 and "exactly one" in both.stderr
    unknown = ganforge("promote", NAME, "--version", "99", env=env)
    assert unknown.returncode == 2 and "version 99" in unknown.stderr


def measured_copy(checkpoint: Path, out: Path, swd: float) -> Path:
    """The checkpoint as another training of its config would leave it, having measured `swd`
    at it."""
    shutil.copytree(checkpoint, out)
    progress = read_progress(out)
    write_progress(out, dataclasses.replace(progress, metrics={"swd1k": swd}))
    return out


def _register_with_score(trained, client, swd: float, tmp_path: Path):
    """A further training of the same config whose checkpoint measured `swd`."""
    tracking_uri, checkpoint, progress = trained
    parent = client.get_run(progress.mlflow_run_id)
    run = client.create_run(parent.info.experiment_id, run_name="retrained")
    client.set_terminated(run.info.run_id)
    retrained = measured_copy(checkpoint, tmp_path / run.info.run_id, swd)
    return register_generator(retrained, run.info.run_id, tracking_uri)


def test_promotion_gate_moves_champion_only_to_a_better_version(
    trained, client, first_release, tmp_path
):
    env = env_for(trained[0])
    first = ganforge("promote", NAME, "--version", first_release.version, env=env)
    assert first.returncode == 0, first.stderr
    assert "no previous champion" in first.stdout
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == first_release.version

    worse = _register_with_score(trained, client, first_release.gate_value + 1.0, tmp_path)
    assert str(client.get_model_version_by_alias(NAME, CANDIDATE).version) == worse.version
    refused = ganforge("promote", NAME, "--version", worse.version, env=env)
    assert refused.returncode == 1
    assert f"{worse.gate_value:.6g}" in refused.stderr
    assert f"{first_release.gate_value:.6g}" in refused.stderr
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == first_release.version

    better = _register_with_score(trained, client, first_release.gate_value - 1.0, tmp_path)
    promoted = ganforge("promote", NAME, "--version", better.version, env=env)
    assert promoted.returncode == 0, promoted.stderr
    assert f"{first_release.gate_value:.6g}" in promoted.stdout
    assert str(client.get_model_version_by_alias(NAME, CHAMPION).version) == better.version


@pytest.mark.slow
def test_registry_through_a_real_mlflow_server_on_postgresql_and_s3(trained, s3_env, tmp_path):
    """The team setup: runs, models and aliases in PostgreSQL behind `mlflow server`, artifacts
    sent over HTTP to the server, which keeps them on S3 (moto); a checkpoint and a model
    round-trip, the model is promoted and sampled through the server."""
    import boto3
    from mlflow import MlflowClient

    checkpoint = measured_copy(trained[1], tmp_path / "checkpoint", swd=1.5)
    boto3.client("s3").create_bucket(Bucket="team-mlflow")
    database = f"mlflow_test_{uuid.uuid4().hex[:12]}"
    server = mlflow_server(tmp_path / "server", database, artifacts="s3://team-mlflow/artifacts")
    with server as url:
        client = MlflowClient(url)
        run = client.create_run(experiment_id(client, "ganforge", url), run_name="on-server")
        client.log_artifacts(run.info.run_id, str(checkpoint), "checkpoint")
        client.set_terminated(run.info.run_id)
        release = register_generator(checkpoint, run.info.run_id, url)
        assert (release.name, release.version, release.gate_value) == (NAME, "1", 1.5)

        env = env_for(url) | s3_env
        promoted = ganforge("promote", NAME, "--version", "1", env=env)
        assert promoted.returncode == 0, promoted.stderr
        out = tmp_path / "grid.png"
        sampled = ganforge("sample", "--model", f"models:/{NAME}@{CHAMPION}", "--num", "4",
                           "--out", str(out), env=env)  # fmt: skip
        assert sampled.returncode == 0, sampled.stderr
        local = ganforge("sample", "--checkpoint", str(checkpoint), "--num", "4", "--out",
                         str(tmp_path / "local.png"), env=env)  # fmt: skip
        assert local.returncode == 0
        grids = [np.asarray(Image.open(p), np.int16) for p in (out, tmp_path / "local.png")]
        assert np.abs(grids[0] - grids[1]).max() <= 1

        back = Path(client.download_artifacts(run.info.run_id, "checkpoint", str(tmp_path)))
        assert (back / "state.pt").read_bytes() == (checkpoint / "state.pt").read_bytes()
        assert client.get_run(run.info.run_id).info.artifact_uri.startswith("mlflow-artifacts:")
        stored = boto3.client("s3").list_objects_v2(Bucket="team-mlflow")["Contents"]
        keys = [item["Key"] for item in stored]
        assert any(k.endswith("/checkpoint/state.pt") for k in keys)
        assert any(k.endswith("/MLmodel") for k in keys)  # the registered model is on S3 too
        assert not (tmp_path / "server" / "artifacts").exists()
        user = pg_user()
        assert psql("select name from registered_models", user, database) == NAME
        aliases = psql("select alias from registered_model_aliases order by alias", user, database)
        assert aliases.split() == [CANDIDATE, CHAMPION]


@pytest.mark.parametrize("family", ["wgan_gp", "began", "progan"])
def test_model_checkpoint_and_training_generator_agree_on_the_familys_prior(
    family, small_dataset, tmp_path
):
    """For each family: the registered model (loaded as a user does, with plain MLflow), the
    checkpoint and the training generator give the same images for the same latents, and
    those latents come from the family's own prior, which the model's metadata records."""
    import mlflow.pytorch
    from mlflow.models import Model

    from pipelines.registry import METADATA_KEY, load_generator

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = tiny_config(small_dataset, family, total_kimg=0.064, checkpoint_every_kimg=0.064)
    options = RunOptions(tracking_uri=tracking_uri, run_name=family)
    trainer = Trainer(config, options, DirectorySession(tmp_path / "run"))
    trainer.run()
    trainer.close()
    checkpoint = DirectorySession(tmp_path / "run").checkpoints()[-1]
    release = register_generator(checkpoint, trainer.state.progress.mlflow_run_id, tracking_uri)

    prior = config.family.prior
    assert prior.distribution == ("uniform" if family == "began" else "normal")
    loaded = load_generator(release.uri, tracking_uri)
    assert loaded.sampler.prior == prior and loaded.metadata["prior"] == prior.to_json()
    latents = loaded.sampler.latents(6, seed=2)
    assert torch.equal(latents, prior.seeded(6, 2))
    if family == "began":
        assert latents.min() >= -1 and latents.max() <= 1 and (latents < 0).any()

    training = trainer.state.sampler()(latents)
    from_checkpoint = Sampler.from_checkpoint(checkpoint)(latents)
    from_registry = loaded.sampler(latents)
    with _tracking_uri(tracking_uri):
        local = mlflow.artifacts.download_artifacts(release.uri, dst_path=str(tmp_path / "m"))
        plain = mlflow.pytorch.load_model(local)
    assert Model.load(local).metadata[METADATA_KEY]["prior"]["distribution"] == prior.distribution
    with torch.no_grad():
        by_user = plain(latents)
    for images in (from_checkpoint, from_registry, by_user):
        torch.testing.assert_close(images, training, atol=1e-5, rtol=1e-5)
    assert training.std(0).mean() > 0  # not a constant image


@contextlib.contextmanager
def _tracking_uri(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
