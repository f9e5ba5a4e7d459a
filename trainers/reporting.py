"""What a run tells people, apart from the training itself: rank 0's MLflow run (params,
lineage and cluster tags, step metrics, sample grids, a copy of the latest checkpoint), its
progress reports to the driver's display, and the evaluation every rank takes part in, with the
gate rule that ranks its results."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trainers.checkpoint import Progress
from trainers.config import TrainConfig
from trainers.console import ProgressReport
from trainers.lineage import cluster_tags
from trainers.sampling import Sampler, write_grid
from trainers.schedule import Stage
from trainers.tracking import BEST_KIMG_TAG, GATE_METRIC_TAG

if TYPE_CHECKING:
    from trainers.loop import RunOptions

log = logging.getLogger(__name__)

SAMPLES_DIR = "samples"  # the grids of the fixed latents: under run_dir and in the MLflow run
# what `Reporter.log` records beside the step metrics' means (the losses): schedule and speed
PROGRESS_KEYS = frozenset(
    {
        "kimg",
        "resolution",
        "fade_alpha",
        "global_batch",
        "workers",
        "images_per_second",
        "seconds_per_kimg",
        "nonfinite_steps",
    }
)


def sample_name(kimg: float) -> str:
    """The file name of the sample grid written at `kimg` (sorts by kimg)."""
    return f"kimg{kimg:010.3f}.png"


def sample_kimg(name: str) -> float:
    return float(name.removeprefix("kimg").removesuffix(".png"))


def gate_metric(configured: list[str], measured: dict[str, float]) -> str | None:
    """The gate: the first configured metric that was measured (FID, say, or SWD listed next
    for when no Inception weights are at hand). Its value ranks the checkpoints (lower is
    better) and decides promotion to champion; None when nothing was measured."""
    return next((name for name in configured if name in measured), None)


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


class Reporter:
    """One rank's reporting; only rank 0 logs, draws and uploads."""

    def __init__(
        self,
        config: TrainConfig,
        options: RunOptions,
        progress: Progress,
        nodes: list[str],  # where each rank runs, in rank order
        rank: int,
    ):
        self.config, self.options, self.rank = config, options, rank
        self.world_size = len(nodes)
        device = options.device
        # fixed latents for sample grids: the same in every run of this config and seed
        self.sample_latents = config.family.prior.sample(
            config.sample_grid**2, torch.Generator(device).manual_seed(config.seed), device
        )
        self.logger = None
        self._interval: _Interval | None = None  # from `start`
        self._stop_kimg = 0.0  # from `start`
        self._channel = options.channel if rank == 0 else None  # to the driver's display
        if rank != 0:
            return
        log.info("%d workers on %d nodes: %s", self.world_size, len(set(nodes)), nodes)
        if options.tracking_uri:
            from trainers.tracking import RunLogger

            self.logger = RunLogger(
                options.tracking_uri,
                config.experiment,
                options.run_name,
                progress.mlflow_run_id,
                config.model_dump(mode="json"),
            )
            gpus = int(device.type == "cuda")
            shape = cluster_tags(len(set(nodes)), self.world_size, gpus_per_worker=gpus)
            # lineage and cluster shape; a resumed run's are updated to the current ones
            self.logger.set_tags(options.tags | shape | {"ganforge.nodes": json.dumps(nodes)})

    # -- the cadence's hooks ----------------------------------------------------------------

    def start(self, progress: Progress, stop_kimg: float, sampler: Sampler) -> None:
        """The untrained baseline grid of a run that starts at zero."""
        self._stop_kimg = stop_kimg
        if progress.kimg == 0:
            self.write_samples(sampler, progress)
        self._interval = _Interval(progress.kimg)

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """A finite step's rank-averaged metrics, toward the next log line."""
        self._interval.add(metrics)

    def log(self, progress: Progress, stage: Stage, global_batch: int) -> None:
        """Interval means of the step metrics plus speed and schedule to MLflow; where the run
        is to the driver."""
        interval = self._interval
        seconds = time.perf_counter() - interval.started
        shown = (progress.kimg - interval.kimg) * 1000
        record = interval.means()
        record.update(
            kimg=progress.kimg,
            resolution=stage.resolution,
            fade_alpha=stage.fade_alpha,
            global_batch=global_batch,
            workers=self.world_size,
            images_per_second=shown / max(seconds, 1e-9),
            seconds_per_kimg=seconds / max(shown / 1000, 1e-9),
            nonfinite_steps=progress.nonfinite_steps,
        )
        if self.logger is not None:
            self.logger.log_metrics(record, progress.images)
        if self._channel is not None:
            from ray.exceptions import RayError  # a channel exists on Ray workers only

            report = ProgressReport(
                progress.kimg,
                self._stop_kimg,
                stage.resolution,
                stage.fade_alpha,
                record["images_per_second"],
            )
            try:
                self._channel.put_nowait(report)
            except RayError as error:  # the display is not worth the run
                log.warning("progress reports to the driver stopped: %s", error)
                self._channel = None
        self._interval = _Interval(progress.kimg)

    def write_samples(self, sampler: Sampler, progress: Progress) -> None:
        """A grid of the fixed latents, under run_dir/samples and in MLflow."""
        if self.rank != 0 or self.options.run_dir is None:
            return
        images = sampler(self.sample_latents)
        path = write_grid(images, self.options.run_dir / SAMPLES_DIR / sample_name(progress.kimg))
        if self.logger is not None:
            self.logger.log_file(path, SAMPLES_DIR)

    def evaluate(self, sampler: Sampler, discriminator: torch.nn.Module, progress: Progress):
        """The config's metrics on `sampler`'s generator, all ranks taking part, recorded in
        `progress` with their gate metric (the checkpoint written next keeps them); a new
        lowest gate value marks this kimg as the best. Rank 0 logs them."""
        from trainers.metrics.driver import evaluate
        from trainers.metrics.evaluation import Evaluation

        started = time.perf_counter()
        evaluation = Evaluation(
            sampler,
            self.config.data,
            seed=self.config.seed,
            discriminator=discriminator,
            family_metrics=self.config.family.metrics(),
        )
        results = evaluate(list(self.config.metrics), evaluation)
        gate = gate_metric(self.config.metrics, results)
        progress.metrics, progress.gate_metric = results, gate
        improved = gate is not None and (
            progress.best_gate_value is None or results[gate] < progress.best_gate_value
        )
        if improved:
            progress.best_gate_value, progress.best_kimg = results[gate], progress.kimg
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
                self.logger.set_tags({GATE_METRIC_TAG: gate, BEST_KIMG_TAG: f"{progress.kimg:.3f}"})

    def record_run(self, progress: Progress) -> None:
        """The MLflow run's id into progress before a checkpoint is written (waiting for the run
        to exist), so that a resumed training logs into the same run."""
        if self.logger is not None:
            progress.mlflow_run_id = self.logger.run_id_future.result()

    def upload_checkpoint(self, directory: Path) -> None:
        """A copy of the latest checkpoint in the MLflow run; waits, since `directory` is
        temporary."""
        if self.logger is not None:
            self.logger.log_checkpoint(directory)

    def close(self, failed: bool = False) -> None:
        """End the MLflow run after its uploads finish."""
        if self.logger is not None:
            self.logger.close("FAILED" if failed else "FINISHED")
