"""The generic training loop: walks the family's phases each step; knows no family by name.

It runs inside each Ray Train worker (or any process with an optional process group) and
talks to its host through a `Session`: where to resume from, and where checkpoints go.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from trainers import distributed
from trainers.checkpoint import (
    Progress,
    read_progress,
    read_rng,
    read_state,
    restore_rng,
    write_checkpoint,
)
from trainers.config import TrainConfig
from trainers.data.reader import ShardReader
from trainers.ema import update_ema
from trainers.families import Family
from trainers.lineage import cluster_tags
from trainers.losses.base import StepState
from trainers.metrics import UNSCORED
from trainers.sampling import Sampler, write_grid
from trainers.schedule import Stage
from trainers.seeding import derived_seed

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss; the last good checkpoint is kept."""


class Session(Protocol):
    def restore_dir(self) -> contextlib.AbstractContextManager[Path | None]:
        """The checkpoint to resume from, as a local directory, or None for a fresh start."""

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Hand a written checkpoint to the host (every rank calls this at the same step)."""

    def placement(self) -> str:
        """Where this rank runs (a cluster node id, or a host name)."""


class DirectorySession:
    """A `Session` without Ray: checkpoints are copied to root/checkpoint-<images shown>/ and a
    new session resumes from the newest."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def checkpoints(self) -> list[Path]:
        found = self.root.glob("checkpoint-*") if self.root.is_dir() else []
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    @contextlib.contextmanager
    def restore_dir(self) -> Iterator[Path | None]:
        found = self.checkpoints()
        yield found[-1] if found else None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        # Every rank's files (state from rank 0, RNG from each) merge into one folder, as Ray
        # merges a checkpoint's ranks, so several processes may share a root.
        images = round(metrics["kimg"] * 1000)
        destination = self.root / f"checkpoint-{images:012d}"
        shutil.copytree(checkpoint_dir, destination, dirs_exist_ok=True)

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
    progress_bar: bool = True
    # NHWC activations and conv weights: cuDNN's bf16 tensor-core convs want them (on CUDA by
    # default); on CPU the default layout is faster
    channels_last: bool | None = None  # None: on when device is cuda


def _crossed(before: float, after: float, every: float) -> bool:
    return int(after / every) > int(before / every)


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


class _Interval:
    """Sums of step metrics since the last log line, kept as tensors (no device sync); counted
    per key, since a phase with an interval (WGAN-GP's G) reports on some steps only."""

    def __init__(self, kimg: float):
        self.kimg, self.started = kimg, time.perf_counter()
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value.detach().float()
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        return {key: (value / self.counts[key]).item() for key, value in self.sums.items()}


class Trainer:
    """One worker's training state and the loop over it."""

    def __init__(self, config: TrainConfig, options: RunOptions, session: Session):
        self.config, self.options, self.session = config, options, session
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.device = options.device
        if config.auto_batch:
            from trainers.auto_batch import choose_batch_per_resolution

            table = choose_batch_per_resolution(config, self.device)
            self.config = config = config.model_copy(update={"batch_per_resolution": table})
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.family: Family = config.family
        self.autocast_dtype = torch.bfloat16 if config.precision == "bf16" else None
        # DCGAN's G has BatchNorm: its statistics must span the global batch, not each rank's.
        self.memory_format = torch.contiguous_format
        if options.channels_last or (options.channels_last is None and self.device.type == "cuda"):
            self.memory_format = torch.channels_last
        generator = self.family.build_generator()
        discriminator = self.family.build_discriminator()
        self.G = distributed.sync_batch_norm(generator, self.device).to(
            self.device, memory_format=self.memory_format
        )
        self.D = discriminator.to(self.device, memory_format=self.memory_format)
        self.loss = self.family.build_loss(self.G, self.D)
        self.phases = self.family.phases()
        self.G_ema = None
        if self.family.ema_beta is not None:
            self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.schedule = config.growth_schedule
        self.progress = Progress()
        # alike on every rank: each takes its rows of the global draw (StepState.rows)
        self.latent_generator = torch.Generator(self.device).manual_seed(config.seed * 7919)
        # fixed latents for sample grids: the same in every run of this config and seed
        self.sample_latents = self.family.prior.sample(
            config.sample_grid**2,
            torch.Generator(self.device).manual_seed(config.seed),
            self.device,
        )
        self.stage = self.schedule.at(0.0)
        self.optimizers = self._new_optimizers(self.stage.resolution)
        self._restore()
        self.progress.world_size = self.world_size
        self.nodes = distributed.gather_strings(session.placement())  # of ranks 0, 1, ...
        self.logger = None
        if self.rank == 0:
            nodes = len(set(self.nodes))
            log.info("%d workers on %d nodes: %s", self.world_size, nodes, self.nodes)
        if self.rank == 0 and options.tracking_uri:
            from trainers.tracking import RunLogger

            self.logger = RunLogger(
                options.tracking_uri,
                config.experiment,
                options.run_name,
                self.progress.mlflow_run_id,
                config.model_dump(mode="json"),
            )
            gpus = int(self.device.type == "cuda")
            shape = cluster_tags(len(set(self.nodes)), self.world_size, gpus_per_worker=gpus)
            # lineage and cluster shape; a resumed run's are updated to the current ones
            self.logger.set_tags(options.tags | shape | {"ganforge.nodes": json.dumps(self.nodes)})

    # -- state ------------------------------------------------------------------------------

    def _new_optimizers(self, resolution: int) -> dict[str, torch.optim.Optimizer]:
        """A fresh Adam per network, with the family's settings for it."""
        optimizers = {}
        for name, module in (("G", self.G), ("D", self.D)):
            adam = self.family.adam(name)
            lr = self.family.learning_rate(name, self.progress.kimg, resolution)
            optimizers[name] = torch.optim.Adam(
                module.parameters(), lr=lr, betas=adam.betas, eps=adam.eps
            )
        return optimizers

    def sampler(self) -> Sampler:
        """The generator users would sample now (G_ema when kept) at the current stage."""
        return Sampler.of(
            self.G_ema if self.G_ema is not None else self.G,
            self.family.prior,
            self.stage.resolution,
            self.stage.fade_alpha,
            self.autocast_dtype,
        )

    def _restore(self) -> None:
        with self.session.restore_dir() as directory:
            if directory is None:
                distributed.broadcast_module(self.G)
                distributed.broadcast_module(self.D)
                if self.G_ema is not None:
                    self.G_ema.load_state_dict(self.G.state_dict())
                return
            state = read_state(directory, self.device)
            self.progress = read_progress(directory)
            self.stage = self.schedule.at(self.progress.kimg)
            self.G.load_state_dict(state["G"])
            self.D.load_state_dict(state["D"])
            if self.G_ema is not None:
                self.G_ema.load_state_dict(state["G_ema"])
            self.optimizers = self._new_optimizers(self.stage.resolution)
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(state[f"optimizer_{name}"])
            self.loss.load_state_dict(state["loss"])
            rng = read_rng(directory, self.rank)
            if rng is None:
                log.warning(
                    "checkpoint has no RNG state for rank %d (written by fewer workers): "
                    "this rank continues with fresh random streams",
                    self.rank,
                )
            else:
                restore_rng(rng, self.latent_generator)
            self.progress.loader_epoch += 1  # the stream restarts after every checkpoint
            log.info("resumed at kimg %.3f (step %d)", self.progress.kimg, self.progress.step)
            if self.progress.world_size != self.world_size:
                self._log_resize(self.progress.world_size)

    def _log_resize(self, before: int) -> None:
        """An elastic restart on another number of workers: each rank's share of the global
        batch changes so that the global batch (and so the training) stays the same."""
        if self.rank != 0:
            return
        resolution = self.stage.resolution
        log.warning(
            "elastic resize: the checkpoint was written by %d workers, training goes on with "
            "%d; global batch at %d² stays %d (per worker %d -> %d)",
            before,
            self.world_size,
            resolution,
            self.config.batch_per_resolution[resolution],
            self.config.batch_per_worker(resolution, before),
            self.config.batch_per_worker(resolution, self.world_size),
        )

    def _state(self) -> dict:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else {},
            **{f"optimizer_{k}": v.state_dict() for k, v in self.optimizers.items()},
            "loss": self.loss.state_dict(),
        }

    def save_checkpoint(self, metrics: dict[str, float]) -> None:
        rank0 = self.rank == 0
        if rank0 and self.logger is not None:
            self.progress.mlflow_run_id = self.logger.run_id_future.result()
        with tempfile.TemporaryDirectory(prefix="ganforge-checkpoint-") as tmp:
            directory = Path(tmp)
            write_checkpoint(
                directory,
                rank=self.rank,
                latent_generator=self.latent_generator,
                state=self._state() if rank0 else None,
                config=self.config.model_dump(mode="json"),
                progress=self.progress,
            )
            if rank0 and self.logger is not None:
                self.logger.log_checkpoint(directory)
            self.session.report(metrics, directory)
        self.progress.loader_epoch += 1

    # -- data -------------------------------------------------------------------------------

    def _batches(self, resolution: int) -> Iterator[torch.Tensor]:
        batch = self.config.batch_per_worker(resolution, self.world_size)
        self.progress.batch_per_resolution[resolution] = batch * self.world_size
        reader = ShardReader(
            self.config.data,
            resolution,
            batch,
            rank=self.rank,
            world_size=self.world_size,
            num_workers=self.config.loader_workers,
            shuffle_buffer=self.config.shuffle_buffer,
            seed=derived_seed(self.config.seed, self.progress.loader_epoch),
            batches_per_epoch=2**62,  # one endless epoch: a restart is a new loader_epoch
            device=self.device,
        )
        yield from reader

    # -- the loop ---------------------------------------------------------------------------

    def step(self, real: torch.Tensor, stage: Stage) -> tuple[dict[str, torch.Tensor], bool]:
        """One step: every phase due at this step, in order. Returns rank-averaged metrics and
        whether every phase's gradients were finite (a non-finite phase is not applied)."""
        state = StepState(
            stage.resolution,
            stage.fade_alpha,
            self.latent_generator,
            self.autocast_dtype,
            rank=self.rank,
            world_size=self.world_size,
        )
        if self.config.mirror_augment:  # one draw over the global batch, as the latents
            generator = self.latent_generator
            flips = state.rows(
                len(real), lambda m: torch.rand(m, generator=generator, device=generator.device)
            )
            real = mirror(real, flips.to(real.device) < 0.5)
        real = fade_real(real, stage.fade_alpha).contiguous(memory_format=self.memory_format)
        metrics: dict[str, torch.Tensor] = {}
        finite, generator_stepped = True, False
        for phase in self.phases:
            if self.progress.step % phase.interval:
                continue
            module = self.G if phase.trains == "G" else self.D
            self.G.requires_grad_(phase.trains == "G")
            self.D.requires_grad_(phase.trains == "D")
            optimizer = self.optimizers[phase.trains]
            optimizer.zero_grad(set_to_none=True)
            phase_metrics = self.loss.accumulate_gradients(phase, real, state)
            metrics.update({f"{phase.name}/{k}": v for k, v in phase_metrics.items()})
            if bool(distributed.average_gradients(module)):
                lr = self.family.learning_rate(phase.trains, self.progress.kimg, stage.resolution)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.step()
                generator_stepped |= phase.trains == "G"
            else:
                finite = False
        metrics = distributed.average_metrics(metrics)
        if finite:
            metrics.update(self.loss.end_step(metrics))
            if generator_stepped and self.G_ema is not None:
                update_ema(self.G_ema, self.G, self.family.ema_beta)
        return metrics, finite

    def write_samples(self) -> None:
        if self.rank != 0 or self.options.run_dir is None:
            return
        images = self.sampler()(self.sample_latents)
        name = f"kimg{self.progress.kimg:010.3f}.png"
        path = write_grid(images, self.options.run_dir / "samples" / name)
        if self.logger is not None:
            self.logger.log_file(path, "samples")

    def _progress_bar(self, stop_kimg: float):
        if self.rank != 0 or not self.options.progress_bar:
            return None
        ray = sys.modules.get("ray")  # imported by Ray's workers; importing it here costs seconds
        if ray is not None and ray.is_initialized():  # the driver renders it, not worker stderr
            from ray.experimental.tqdm_ray import tqdm
        else:
            from tqdm import tqdm
        bar = tqdm(desc="training", total=round(stop_kimg, 3), unit="kimg")
        bar.update(round(self.progress.kimg, 3))
        return bar

    def run(self) -> Progress:
        config, progress = self.config, self.progress
        stop_kimg = self.options.stop_kimg or config.total_kimg
        self._bar = self._progress_bar(stop_kimg)
        if progress.kimg == 0:
            self.write_samples()  # the untrained baseline grid
        self._interval = _Interval(progress.kimg)
        consecutive_nonfinite = 0
        previous = Stage(progress.resolution, progress.fade_alpha) if progress.resolution else None
        resolution, batches = progress.resolution or None, None
        first_step = progress.step
        while progress.kimg < stop_kimg - 1e-9:
            self.stage = self.schedule.at(progress.kimg)
            if previous is not None and self.family.resets_optimizers(previous, self.stage):
                self.optimizers = self._new_optimizers(self.stage.resolution)
                progress.optimizer_resets += 1
            previous = self.stage
            if self.stage.resolution != resolution:
                resolution, batches = self.stage.resolution, None
            if batches is None:
                batches = self._batches(resolution)
            real = next(batches)
            metrics, finite = self.step(real, self.stage)
            if progress.step == first_step and self.rank == 0:  # launch overhead ends here
                log.info("first step done at %.3f (unix time)", time.time())
            before = progress.kimg
            progress.images += real.shape[0] * self.world_size
            progress.step += 1
            progress.resolution, progress.fade_alpha = resolution, self.stage.fade_alpha
            if finite:
                consecutive_nonfinite = 0
                self._interval.add(metrics)
            else:
                progress.nonfinite_steps += 1
                consecutive_nonfinite += 1
                log.warning("non-finite loss at kimg %.3f: step skipped", progress.kimg)
                if consecutive_nonfinite >= config.max_nonfinite_steps:
                    raise NonFiniteLossError(
                        f"{consecutive_nonfinite} consecutive steps had a non-finite loss "
                        f"(at kimg {progress.kimg:.3f}); training stopped. The last good "
                        "checkpoint is kept: lower the learning rate and resume with --resume."
                    )
            done = progress.kimg >= stop_kimg - 1e-9
            if _crossed(before, progress.kimg, config.log_every_kimg) or done:
                self._log(real.shape[0] * self.world_size)
            if _crossed(before, progress.kimg, config.sample_every_kimg) or done:
                self.write_samples()
            score = UNSCORED
            if config.metrics and (
                done or _crossed(before, progress.kimg, config.eval_every_kimg or math.inf)
            ):
                score = self.evaluate_metrics()
            if _crossed(before, progress.kimg, config.checkpoint_every_kimg) or done:
                self.save_checkpoint({"kimg": progress.kimg, "score": score})
                batches = None  # the stream restarts from the next loader_epoch's seed
        if self._bar is not None:
            self._bar.close()
        return progress

    def evaluate_metrics(self) -> float:
        """The config's metrics on the current generator (G_ema when kept), all ranks taking
        part; rank 0 logs them. Returns the score, the first metric measured (UNSCORED if
        none was): a new lowest marks this kimg as the best, and Ray keeps the best-scored
        checkpoint."""
        from trainers.metrics.driver import evaluate
        from trainers.metrics.evaluation import Evaluation

        started = time.perf_counter()
        evaluation = Evaluation(
            self.sampler(),
            self.config.data,
            seed=self.config.seed,
            discriminator=self.D,
            family_metrics=self.family.metrics(),
        )
        results = evaluate(list(self.config.metrics), evaluation)
        progress = self.progress
        gate = next((name for name in self.config.metrics if name in results), None)
        improved = gate is not None and (
            progress.best_score is None or results[gate] < progress.best_score
        )
        if improved:
            progress.best_score, progress.best_kimg = results[gate], progress.kimg
        if self.rank == 0:
            log.info(
                "kimg %.3f metrics (%.1f s): %s%s",
                progress.kimg,
                time.perf_counter() - started,
                ", ".join(f"{k} {v:.4g}" for k, v in results.items()),
                f"; best {gate} so far" * improved,
            )
        if self.logger is not None and results:
            self.logger.log_metrics(results, progress.images)
            if improved:
                self.logger.set_tags(
                    {"ganforge.score_metric": gate, "ganforge.best_kimg": f"{progress.kimg:.3f}"}
                )
        return results[gate] if gate is not None else UNSCORED

    def _log(self, global_batch: int) -> None:
        """Interval means of the step metrics plus speed and schedule, to MLflow and the bar."""
        progress, interval = self.progress, self._interval
        seconds = time.perf_counter() - interval.started
        shown = (progress.kimg - interval.kimg) * 1000
        record = interval.means()
        record.update(
            kimg=progress.kimg,
            resolution=self.stage.resolution,
            fade_alpha=self.stage.fade_alpha,
            batch_size=global_batch,
            workers=self.world_size,
            images_per_second=shown / max(seconds, 1e-9),
            seconds_per_kimg=seconds / max(shown / 1000, 1e-9),
            nonfinite_steps=progress.nonfinite_steps,
        )
        if self.logger is not None:
            self.logger.log_metrics(record, progress.images)
        if self._bar is not None:
            self._bar.set_description(
                f"{self.stage.resolution}² alpha {self.stage.fade_alpha:.2f} "
                f"batch {global_batch} {record['images_per_second']:.0f} img/s"
            )
            self._bar.update(round(progress.kimg - interval.kimg, 3))
        self._interval = _Interval(progress.kimg)

    def close(self, failed: bool = False) -> None:
        """End the MLflow run after its uploads finish."""
        if self.logger is not None:
            self.logger.close("FAILED" if failed else "FINISHED")
