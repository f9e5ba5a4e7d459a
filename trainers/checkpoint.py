"""Checkpoints that resume exactly: state dicts and the resolved config, whose model section
builds the networks (the family's config is their constructors' one record of arguments).

Layout of one checkpoint directory (rank 0 writes all but the per-rank RNG files):
  state.pt           G, D, G_ema ({} where the family keeps none), optimizers, the loss's
                     running state
  config.json        the resolved TrainConfig: its model section builds G and D (the family)
  progress.json      progress as JSON, readable without torch: where training stands and what
                     was measured there (the launcher, the pipeline and the registry read it)
  rng-rank<r>.pt     rank r's torch/CUDA/numpy/python RNG states and its latent generator
Nothing pickles code: everything loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from trainers.ema import sampled_generator
from trainers.run_storage import CONFIG_NAME, PROGRESS_NAME, STATE_NAME
from trainers.schedule import GrowthSchedule, Stage

if TYPE_CHECKING:
    from trainers.config import TrainConfig


@dataclass
class Progress:
    """Where training stands; equal on every rank."""

    images: int = 0  # real images shown to D, all ranks together
    step: int = 0  # steps taken (one batch per rank each)
    resolution: int = 0  # of the latest step (0 before the first)
    fade_alpha: float = 1.0  # of the latest step: with resolution, the stage Adam resets key on
    loader_epoch: int = 0  # times the data stream was (re)started; seeds its order
    nonfinite_steps: int = 0  # steps skipped for a non-finite loss, in total
    optimizer_resets: int = 0  # times the family restarted Adam's state (ProGAN's growth)
    batch_per_resolution: dict[int, int] = field(default_factory=dict)  # global, as used
    world_size: int = 1  # ranks that wrote the checkpoint (an elastic resume may differ)
    mlflow_run_id: str | None = None  # a resumed training logs into the same MLflow run
    best_gate_value: float | None = None  # lowest value of the gate metric so far
    best_kimg: float | None = None  # where it was measured
    # what the evaluation at the latest step measured ({} when none ran there), per-level keys
    # included (swd1k_32), and the gate metric: the first configured metric measured, which
    # ranks the checkpoints and gates promotion to champion
    metrics: dict[str, float] = field(default_factory=dict)
    gate_metric: str | None = None

    @property
    def kimg(self) -> float:
        return self.images / 1000

    @property
    def gate_value(self) -> float | None:
        """The gate metric's value at the latest step; None when nothing was measured there."""
        return self.metrics[self.gate_metric] if self.gate_metric is not None else None

    def advance(self, images: int, stage: Stage) -> None:
        """One step taken at `stage`, showing `images` real images (all ranks together); the
        previous step's measurements no longer describe the networks."""
        self.images += images
        self.step += 1
        self.resolution, self.fade_alpha = stage.resolution, stage.fade_alpha
        self.metrics, self.gate_metric = {}, None

    def stage(self, schedule: GrowthSchedule) -> Stage:
        """The resolution and fade alpha of the latest step: the stage G was trained at (the
        schedule's first before any step)."""
        if not self.resolution:
            return schedule.at(0.0)
        return Stage(self.resolution, self.fade_alpha)

    @classmethod
    def from_json(cls, data: dict) -> Progress:
        data = dict(data)
        data["batch_per_resolution"] = {int(k): v for k, v in data["batch_per_resolution"].items()}
        return cls(**data)


def rng_name(rank: int) -> str:
    return f"rng-rank{rank}.pt"


def capture_rng(latent_generator: torch.Generator) -> dict:
    legacy = np.random.get_state()  # ('MT19937', uint32[624], pos, has_gauss, cached)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(legacy[1].astype(np.int64)), *legacy[2:]],
        "python": random.getstate(),
        "latents": latent_generator.get_state(),
    }


def restore_rng(state: dict, latent_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    keys, *rest = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), *rest))
    random.setstate(_as_tuples(state["python"]))
    latent_generator.set_state(state["latents"])


def _as_tuples(value):
    """random.setstate wants the nested tuples getstate gave (a round trip may give lists)."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def write_checkpoint(
    directory: Path,
    *,
    rank: int,
    latent_generator: torch.Generator,
    state: dict | None = None,
    config: dict | None = None,
    progress: Progress | None = None,
) -> None:
    """Rank r writes its RNG file; rank 0 also passes state, config and progress."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(capture_rng(latent_generator), directory / rng_name(rank))
    if rank == 0:
        torch.save(state, directory / STATE_NAME)
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        write_progress(directory, progress)


def write_progress(directory: Path, progress: Progress) -> None:
    (directory / PROGRESS_NAME).write_text(json.dumps(asdict(progress), indent=2))


def read_state(directory: Path, device: torch.device | str = "cpu") -> dict:
    return torch.load(directory / STATE_NAME, map_location=device, weights_only=True)


def read_rng(directory: Path, rank: int) -> dict | None:
    """This rank's RNG states, or None when the checkpoint came from fewer ranks."""
    path = directory / rng_name(rank)
    return torch.load(path, weights_only=True) if path.exists() else None


def load_networks(
    directory: Path, device: torch.device | str = "cpu"
) -> dict[str, torch.nn.Module]:
    """G (its EMA copy when the family keeps one: that is the generator users sample) and D of
    a checkpoint, built by the family of its config and loaded, in eval mode."""
    family = read_config(directory).family
    state = read_state(directory, device)
    weights = {"G": sampled_generator(state["G"], state["G_ema"] or None), "D": state["D"]}
    networks = {"G": family.build_generator(), "D": family.build_discriminator()}
    for name, network in networks.items():
        network.load_state_dict(weights[name])
        networks[name] = network.to(device).eval().requires_grad_(False)
    return networks


def read_config(directory: Path) -> TrainConfig:
    """The resolved TrainConfig the checkpoint's run trained with."""
    from trainers.config import TrainConfig

    return TrainConfig.model_validate_json((directory / CONFIG_NAME).read_text())


def read_stage(directory: Path) -> Stage:
    """The stage the checkpoint's G was trained at (`Progress.stage`)."""
    return read_progress(directory).stage(read_config(directory).growth_schedule)


def read_progress(directory: Path) -> Progress:
    return Progress.from_json(json.loads((directory / PROGRESS_NAME).read_text()))
