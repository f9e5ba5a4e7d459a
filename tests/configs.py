"""The tests' one tiny training config per family: the quickstart preset (configs/train/) with
small networks, a batch of 16 and a schedule of a few hundred images, so a run on the 40-image
test dataset takes seconds. In-process runs (`tiny_config`), `ganforge train` runs
(`tiny_overrides` as --set arguments) and the pipeline's presets all start from it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from trainers.config import TrainConfig, apply_overrides

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "train"

TINY_MODELS = {
    "wgan_gp": {"channels": 4, "n_critic": 2},
    "began": {"channels": 8, "generator_channels": None, "latent_dim": 8},  # None: G as wide as D
    "progan": {
        "resolution": 16,
        "start_resolution": 4,
        "latent_dim": 16,
        "fmap_base": 64,
        "fmap_max": 16,
        "fade_kimg": 0.064,
        "stable_kimg": 0.064,
    },
}
TINY_RUN = {
    "workers": 2,  # the presets train on 1 (a 2-core machine); tests run data-parallel
    "cpus_per_worker": 1,  # the suite's cluster: two nodes of 1 CPU each
    "total_kimg": 0.384,  # 24 steps of 16 images
    "batch_per_resolution": {4: 16, 8: 16, 16: 16, 32: 16},
    "loader_processes": 0,
    "shuffle_buffer": 20,
    "log_every_kimg": 0.064,
    "sample_every_kimg": 0.192,
    "checkpoint_every_kimg": 0.192,
    "sample_grid": 2,
}


def tiny_overrides(family: str) -> list[str]:
    """`key=value` overrides that make the family's quickstart preset the tiny config."""
    settings = {f"model.{key}": value for key, value in TINY_MODELS[family].items()} | TINY_RUN
    return [f"{key}={json.dumps(value)}" for key, value in settings.items()]


def tiny_config(data: Path | str, family: str, model: dict | None = None, **changes) -> TrainConfig:
    """The tiny config on `data`, with `model` changes to its model section and `changes` to
    the rest. It measures no metric unless `changes` lists some (a measurement costs seconds
    in-process); `ganforge train` runs keep the preset's."""
    raw = yaml.safe_load((PRESETS / f"{family}.yaml").read_text())
    raw = apply_overrides(raw, tiny_overrides(family))
    raw["model"] |= model or {}
    return TrainConfig.model_validate(raw | {"data": str(data), "metrics": []} | changes)
