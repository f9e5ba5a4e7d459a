"""The MLflow model registry: a run's generator logged as a model that loads ready to sample,
one registered model per (family, dataset, resolution), the `candidate` and `champion`
aliases, and the gate that moves `champion`.

A registered generator is a `trainers.sampling.StageGenerator` exported with torch.export
(MLflow's "pt2" format): `mlflow.pytorch.load_model(uri)` returns a module that maps latents
[N, latent_dim] float32 to images [N, 3, R, R] in [-1, 1], with no ganforge code needed to
load it. The latents must come from the family's prior, which the model's metadata records
(`ganforge.prior`: N(0, 1) for WGAN-GP and ProGAN, U[-1, 1] for BEGAN). MLflow is imported
inside the functions (≈ 6 s).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.tracking import GATE_METRIC_TAG

MODEL_ARTIFACT = "generator"  # the model's name inside its run
CANDIDATE, CHAMPION = "candidate", "champion"
GATE_VALUE_TAG = "ganforge.gate_value"  # beside GATE_METRIC_TAG: its value at the checkpoint
METRIC_TAG_PREFIX = "metric."  # metric.<key>: each value measured at the registered checkpoint
# run tags copied onto every version, so the registry alone says where a model came from
LINEAGE_TAG_PREFIXES = ("ganforge.git.", "ganforge.data.", "ganforge.cluster.", "ganforge.version.")
METADATA_KEY = "ganforge"  # our section of the MLmodel file's metadata


class RegistryError(ValueError):
    """A model name, version or URI that is not in the registry (exit status 2)."""


class GateRefused(RuntimeError):
    """The version does not beat the champion on the gate metric (exit status 1)."""


@dataclass(frozen=True)
class Release:
    name: str
    version: str
    gate_metric: str | None
    gate_value: float | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @classmethod
    def of(cls, version) -> Release:
        """The release an MLflow ModelVersion records in its tags."""
        value = version.tags.get(GATE_VALUE_TAG)
        return cls(
            version.name,
            str(version.version),
            version.tags.get(GATE_METRIC_TAG),
            float(value) if value is not None else None,
        )


def registered_model_name(family: str, data: str, resolution: int) -> str:
    """`ganforge-<family>-<dataset folder name>-<resolution>`, in MLflow's allowed characters."""
    dataset = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(data.rstrip("/")).name) or "dataset"
    return f"ganforge-{family}-{dataset}-{resolution}"


@contextlib.contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at `uri` for a block. mlflow.set_tracking_uri also writes
    MLFLOW_TRACKING_URI into os.environ, which later subprocesses would inherit: restored."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        if before is not None:
            os.environ["MLFLOW_TRACKING_URI"] = before


def _pip_requirement() -> str:
    """torch as the registry installs it: a local build tag such as +cpu is not on PyPI."""
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def register_generator(checkpoint: Path, run_id: str, tracking_uri: str) -> Release:
    """Log the checkpoint's generator (its EMA copy where kept) into its MLflow run, register it
    under `registered_model_name(...)` with the metrics measured at the checkpoint (its progress
    record) and the run's lineage as tags, and point the `candidate` alias at the new version."""
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    from trainers.checkpoint import read_config, read_progress
    from trainers.sampling import Sampler

    config = read_config(checkpoint)
    progress = read_progress(checkpoint)
    sampler = Sampler.from_checkpoint(checkpoint)
    prior = sampler.prior

    client = MlflowClient(tracking_uri)
    metrics, gate = progress.metrics, progress.gate_metric
    name = registered_model_name(config.model.family, config.data, sampler.resolution)
    tags = {
        key: value
        for key, value in client.get_run(run_id).data.tags.items()
        if key.startswith(LINEAGE_TAG_PREFIXES)
    }
    tags |= {
        "ganforge.family": config.model.family,
        "ganforge.kimg": f"{progress.kimg:.3f}",
        "ganforge.resolution": str(sampler.resolution),
        "ganforge.prior": prior.distribution,
        "ganforge.checkpoint": str(checkpoint),
    }
    tags |= {f"{METRIC_TAG_PREFIX}{key}": repr(value) for key, value in metrics.items()}
    if gate is not None:
        tags |= {GATE_METRIC_TAG: gate, GATE_VALUE_TAG: repr(progress.gate_value)}
    metadata = {
        METADATA_KEY: {
            "family": config.model.family,
            "resolution": sampler.resolution,
            "fade_alpha": sampler.fade_alpha,
            "latent_dim": prior.latent_dim,
            "prior": prior.to_json(),  # what to feed it: {distribution, latent_dim}
            "kimg": progress.kimg,
            "data": config.data,
            "metrics": list(config.metrics),
            "image_range": [-1, 1],
        }
    }

    with _tracking(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            sampler.generator.eval(),
            name=MODEL_ARTIFACT,
            input_example=sampler.latents(2, seed=0).numpy(),
            pip_requirements=[_pip_requirement()],
            metadata=metadata,
        )
    _ensure_registered_model(client, name, config.model.family, sampler.resolution, prior)
    # the client's call, as mlflow.register_model prints what it does onto stderr; the store
    # finds the logged model through the fluent API's tracking URI
    with _tracking(tracking_uri):
        version = client.create_model_version(
            name, info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id
        )
    client.set_registered_model_alias(name, CANDIDATE, version.version)
    return Release(name, str(version.version), gate, progress.gate_value)


PRIOR_TEXT = {"normal": "~ N(0, 1)", "uniform": "~ U[-1, 1] per component"}


def _ensure_registered_model(client, name: str, family: str, resolution: int, prior) -> None:
    from mlflow.exceptions import MlflowException

    description = (
        f"ganforge {family} generator at {resolution}². "
        f"mlflow.pytorch.load_model('models:/{name}@{CHAMPION}') returns a module mapping "
        f"latents [N, {prior.latent_dim}] float32 {PRIOR_TEXT[prior.distribution]} to images "
        "[N, 3, R, R] in [-1, 1]. "
        f"Aliases: '{CANDIDATE}' is the latest registration, '{CHAMPION}' the best through "
        f"the gate (`ganforge promote`)."
    )
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _version(client, name: str, version: str | None = None, alias: str | None = None):
    """The model version, or None for an alias nobody holds; RegistryError for an unknown
    name or version."""
    from mlflow.exceptions import MlflowException

    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        if alias is not None and client.search_registered_models(f"name = '{name}'"):
            return None
        what = f"alias {alias}" if alias is not None else f"version {version}"
        raise RegistryError(f"no registered model {name!r} with {what}") from None


def champion(name: str, tracking_uri: str) -> Release | None:
    """The version `champion` points at, or None while none does."""
    from mlflow import MlflowClient

    version = _version(MlflowClient(tracking_uri), name, alias=CHAMPION)
    return None if version is None else Release.of(version)


def promote(name: str, version: str, tracking_uri: str) -> str:
    """Point `champion` at `version` if its gate metric is lower than the champion's (or no
    version is champion yet); returns what happened. GateRefused names both numbers."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    candidate = _version(client, name, version=version)
    gate = candidate.tags.get(GATE_METRIC_TAG)
    if gate is None:
        raise GateRefused(f"{name} v{version} has no measured metric to gate on")
    value = float(candidate.tags[GATE_VALUE_TAG])
    champion = _version(client, name, alias=CHAMPION)
    if champion is not None and champion.version == candidate.version:
        return f"{name} v{version} is already {CHAMPION} ({gate} {value:.6g})"
    before = "no previous champion"
    if champion is not None:
        held = champion.tags.get(METRIC_TAG_PREFIX + gate)
        if held is None:
            raise GateRefused(
                f"{CHAMPION} v{champion.version} of {name} has no {gate} measurement to "
                f"compare with v{version}'s {gate} {value:.6g}"
            )
        if not value < float(held):
            raise GateRefused(
                f"{name} v{version}: {gate} {value:.6g} does not beat {CHAMPION} "
                f"v{champion.version}'s {float(held):.6g}; {CHAMPION} stays v{champion.version}"
            )
        before = f"v{champion.version}'s {float(held):.6g}"
    client.set_registered_model_alias(name, CHAMPION, candidate.version)
    return f"{name} v{version} is now {CHAMPION}: {gate} {value:.6g} (was {before})"


@dataclass
class LoadedGenerator:
    """A registered generator as a Sampler (with the prior it was trained on) and its metadata."""

    sampler: Any  # trainers.sampling.Sampler
    metadata: dict  # the METADATA_KEY section written by register_generator


def load_generator(uri: str, tracking_uri: str) -> LoadedGenerator:
    """Download a registered (or any logged) generator once and load it; RegistryError for a
    URI the registry does not hold or a model ganforge did not log."""
    import mlflow
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from trainers.prior import LatentPrior
    from trainers.sampling import Sampler

    with (
        _tracking(tracking_uri),
        tempfile.TemporaryDirectory(prefix="ganforge-model-") as directory,
    ):
        try:
            local = mlflow.artifacts.download_artifacts(uri, dst_path=directory)
        except MlflowException as error:
            raise RegistryError(f"--model {uri}: {error.message}") from None
        metadata = (Model.load(local).metadata or {}).get(METADATA_KEY)
        if metadata is None:
            raise RegistryError(f"--model {uri}: not a ganforge generator (no ganforge metadata)")
        program = mlflow.pytorch.load_model(local)
    prior = LatentPrior.from_json(metadata["prior"])
    # on the CPU, where the program was exported
    sampler = Sampler(program, prior, metadata["resolution"], metadata["fade_alpha"])
    return LoadedGenerator(sampler, metadata)
