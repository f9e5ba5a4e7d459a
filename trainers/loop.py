"""The generic training loop: walks the family's phases each step; knows no family by name.

It runs inside each Ray Train worker (or any process with an optional process group) and
talks to its host through a `Session`: where to resume from, and where checkpoints go.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from trainers import distributed
from trainers.checkpoint import Progress
from trainers.config import TrainConfig
from trainers.data.reader import ShardReader
from trainers.ema import update_ema
from trainers.losses.base import StepState
from trainers.metrics import UNSCORED
from trainers.reporting import Reporter
from trainers.run_storage import CHECKPOINT_PREFIX, checkpoint_name
from trainers.schedule import Stage
from trainers.seeding import derived_seed
from trainers.state import TrainingState

if TYPE_CHECKING:
    from ray.util.queue import Queue

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss; the last good checkpoint is kept."""


class Session(Protocol):
    def restore_dir(self) -> contextlib.AbstractContextManager[Path | None]:
        """The checkpoint to resume from, as a local directory, or None for a fresh start."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path, name: str) -> None:
        """Hand a written checkpoint to the host, to keep as `name` (every rank calls this at
        the same step, with its own files)."""

    def placement(self) -> str:
        """Where this rank runs (a cluster node id, or a host name)."""


class DirectorySession:
    """A `Session` without Ray: checkpoints are copied to root/checkpoint_<images>/ (the names
    Ray's are stored under) and a new session resumes from the newest."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def checkpoints(self) -> list[Path]:
        """Oldest first (the names sort in training order)."""
        found = self.root.glob(f"{CHECKPOINT_PREFIX}*") if self.root.is_dir() else []
        return sorted(found)

    @contextlib.contextmanager
    def restore_dir(self) -> Iterator[Path | None]:
        found = self.checkpoints()
        yield found[-1] if found else None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path, name: str) -> None:
        # Every rank's files (state from rank 0, RNG from each) merge into one folder, as Ray
        # merges a checkpoint's ranks, so several processes may share a root.
        shutil.copytree(checkpoint_dir, self.root / name, dirs_exist_ok=True)

    def placement(self) -> str:
        return socket.gethostname()


@dataclass
class RunOptions:
    """What the launcher decides per run, beside the config."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    stop_kimg: float | None = None  # stop (with a checkpoint) here instead of total_kimg
    run_dir: Path | None = None  # rank 0 writes sample grids under run_dir/samples
    tracking_uri: str | None = None  # MLflow store rank 0 logs to; None logs nothing
    run_name: str = "ganforge"  # MLflow run name of a new run
    tags: dict[str, str] = field(default_factory=dict)  # MLflow tags of the run (its lineage)
    channel: Queue | None = None  # rank 0's progress reports to the driver (trainers.console)
    # NHWC activations and conv weights: cuDNN's bf16 tensor-core convs want them, and on CPU
    # oneDNN runs the quickstart nets' steps 5-20% faster (single thread, images per CPU-second:
    # WGAN-GP 790 -> 840, BEGAN 145 -> 175, ProGAN at 32² 100 -> 120)
    channels_last: bool = True

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def _due(before: float, after: float, done: bool, every_kimg: float) -> bool:
    """Whether something done every `every_kimg` is due after a step from kimg `before` to
    `after`: it crossed a multiple, or the run is done."""
    return done or int(after / every_kimg) > int(before / every_kimg)


def mirror(real: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """real [N, 3, R, R] with the rows where `flips` [N] is True flipped left-right."""
    return torch.where(flips.view(-1, 1, 1, 1), real.flip(3), real)


def fade_real(real: torch.Tensor, fade_alpha: float) -> torch.Tensor:
    """During a fade-in, real images blend with their half-resolution version (box-filtered and
    nearest-upsampled), as ProGAN does, so D sees what G can produce at this alpha."""
    if fade_alpha >= 1.0:
        return real
    coarse = F.interpolate(F.avg_pool2d(real, 2), scale_factor=2, mode="nearest")
    return torch.lerp(coarse, real, fade_alpha)


class Trainer:
    """One worker's training: the cadence of steps, logs, samples, evaluations and checkpoints
    over a `TrainingState`, with a `Reporter` telling people how it goes."""

    def __init__(self, config: TrainConfig, options: RunOptions, session: Session):
        self.options, self.session = options, session
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        if config.auto_batch:
            from trainers.auto_batch import choose_batch_per_resolution

            table = choose_batch_per_resolution(config, options.device)
            config = config.model_copy(update={"batch_per_resolution": table})
        self.config = config
        self.state = TrainingState(config, options.device, options.memory_format)
        with session.restore_dir() as directory:
            self.state.restore(directory)
        nodes = distributed.gather_strings(session.placement())  # of ranks 0, 1, ...
        self.reporter = Reporter(config, options, self.state.progress, nodes, self.rank)

    # -- data -------------------------------------------------------------------------------

    def _batches(self, resolution: int) -> Iterator[torch.Tensor]:
        batch = self.config.batch_per_worker(resolution, self.world_size)
        progress = self.state.progress
        progress.batch_per_resolution[resolution] = batch * self.world_size
        reader = ShardReader(
            self.config.data,
            resolution,
            batch,
            rank=self.rank,
            world_size=self.world_size,
            loader_processes=self.config.loader_processes,
            shuffle_buffer=self.config.shuffle_buffer,
            seed=derived_seed(self.config.seed, progress.loader_epoch),
            batches_per_epoch=2**62,  # one endless epoch: a restart is a new loader_epoch
            device=self.options.device,
        )
        yield from reader

    # -- the loop ---------------------------------------------------------------------------

    def step(self, real: torch.Tensor, stage: Stage) -> tuple[dict[str, torch.Tensor], bool]:
        """One step: every phase due at this step, in order. Returns rank-averaged metrics and
        whether every phase's gradients were finite (a non-finite phase is not applied)."""
        state = self.state
        G, D, generator = state.G, state.D, state.latent_generator
        step_state = StepState(
            stage.resolution,
            stage.fade_alpha,
            generator,
            state.autocast_dtype,
            rank=self.rank,
            world_size=self.world_size,
        )
        if self.config.mirror_augment:  # one draw over the global batch, as the latents
            flips = step_state.rows(
                len(real), lambda m: torch.rand(m, generator=generator, device=generator.device)
            )
            real = mirror(real, flips.to(real.device) < 0.5)
        real = fade_real(real, stage.fade_alpha).contiguous(memory_format=state.memory_format)
        metrics: dict[str, torch.Tensor] = {}
        finite, generator_stepped = True, False
        for phase in state.phases:
            if state.progress.step % phase.interval:
                continue
            module = G if phase.trains == "G" else D
            G.requires_grad_(phase.trains == "G")
            D.requires_grad_(phase.trains == "D")
            optimizer = state.optimizers[phase.trains]
            optimizer.zero_grad(set_to_none=True)
            phase_metrics = state.loss.accumulate_gradients(phase, real, step_state)
            metrics.update({f"{phase.name}/{k}": v for k, v in phase_metrics.items()})
            if bool(distributed.average_gradients(module)):
                lr = state.family.learning_rate(phase.trains, state.progress.kimg, stage.resolution)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
                generator_stepped |= phase.trains == "G"
            else:
                finite = False
        metrics = distributed.average_metrics(metrics)
        if finite:
            metrics.update(state.loss.end_step(metrics))
            if generator_stepped and state.G_ema is not None:
                update_ema(state.G_ema, G, state.family.ema_beta)
        return metrics, finite

    def run(self) -> Progress:
        config, state, reporter = self.config, self.state, self.reporter
        progress = state.progress
        stop_kimg = self.options.stop_kimg or config.total_kimg
        reporter.start(progress, stop_kimg, state.sampler())
        previous, batches, nonfinite_in_a_row = state.stage, None, 0
        first_step = progress.step
        while progress.kimg < stop_kimg - 1e-9:
            stage = state.schedule.at(progress.kimg)
            if state.family.resets_optimizers(previous, stage):
                state.reset_optimizers(stage.resolution)
            if batches is None or stage.resolution != previous.resolution:
                batches = self._batches(stage.resolution)
            previous = stage
            real = next(batches)
            metrics, finite = self.step(real, stage)
            if progress.step == first_step and self.rank == 0:  # launch overhead ends here
                log.info("first step done at %.3f (unix time)", time.time())
            before, global_batch = progress.kimg, real.shape[0] * self.world_size
            progress.advance(global_batch, stage)
            if finite:
                nonfinite_in_a_row = 0
                reporter.add(metrics)
            else:
                nonfinite_in_a_row += 1
                self._skipped(nonfinite_in_a_row)
            due = functools.partial(_due, before, progress.kimg, progress.kimg >= stop_kimg - 1e-9)
            if due(config.log_every_kimg):
                reporter.log(progress, stage, global_batch)
            if due(config.sample_every_kimg):
                reporter.write_samples(state.sampler(), progress)
            if config.metrics and due(config.eval_every_kimg or math.inf):
                reporter.evaluate(state.sampler(), state.D, progress)
            if due(config.checkpoint_every_kimg):
                self.save_checkpoint()
                progress.loader_epoch += 1  # the stream restarts, from the next epoch's seed
                batches = None
        return progress

    def _skipped(self, in_a_row: int) -> None:
        """A step whose gradients were not finite was not applied: counted, and the run stops
        once max_nonfinite_steps come in a row."""
        progress = self.state.progress
        progress.nonfinite_steps += 1
        log.warning("non-finite loss at kimg %.3f: step skipped", progress.kimg)
        if in_a_row >= self.config.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{in_a_row} consecutive steps had a non-finite loss "
                f"(at kimg {progress.kimg:.3f}); training stopped. The last good "
                "checkpoint is kept: lower the learning rate and resume with --resume."
            )

    def save_checkpoint(self) -> None:
        """Every rank's part of a checkpoint, handed to the session; Ray ranks checkpoints by
        the gate value measured at this step (UNSCORED where none was)."""
        progress = self.state.progress
        self.reporter.record_run(progress)
        gate_value = UNSCORED if progress.gate_value is None else progress.gate_value
        with tempfile.TemporaryDirectory(prefix="ganforge-checkpoint-") as tmp:
            directory = Path(tmp)
            self.state.write(directory)
            self.reporter.upload_checkpoint(directory)
            name = checkpoint_name(progress.images)
            metrics = {"kimg": progress.kimg, "gate_value": gate_value}
            self.session.report(metrics, directory, name)

    def close(self, failed: bool = False) -> None:
        """End the MLflow run after its uploads finish."""
        self.reporter.close(failed)
