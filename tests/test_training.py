"""The generic loop in one process: exact resume, schedules, non-finite handling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.configs import PRESETS, tiny_config
from trainers.checkpoint import read_progress, read_state
from trainers.config import load_train_config
from trainers.loop import DirectorySession, NonFiniteLossError, RunOptions, Trainer, mirror


class RecordingTrainer(Trainer):
    """Keeps every step's rank-averaged metrics, to compare runs step by step."""

    def __init__(self, *args):
        self.history: list[dict[str, float]] = []
        super().__init__(*args)

    def step(self, real, stage):
        metrics, finite = super().step(real, stage)
        self.history.append({k: v.item() for k, v in metrics.items()})
        return metrics, finite


def run(config, session_dir: Path, stop_kimg=None) -> RecordingTrainer:
    options = RunOptions(stop_kimg=stop_kimg)
    trainer = RecordingTrainer(config, options, DirectorySession(session_dir))
    trainer.run()
    return trainer


@pytest.mark.parametrize("family", ["wgan_gp", "began", "progan"])
def test_resume_equals_uninterrupted_run(family, small_dataset, tmp_path):
    """Stop at a checkpoint, resume in a new Trainer: every later step's losses and the final
    weights (G, D, G_ema, optimizers, k_t) equal one uninterrupted run."""
    config = tiny_config(small_dataset, family, checkpoint_every_kimg=0.192)
    whole = run(config, tmp_path / "whole")
    first = run(config, tmp_path / "split", stop_kimg=0.192)
    second = run(config, tmp_path / "split")
    kept = DirectorySession(tmp_path / "split").checkpoints()  # named as Ray's: by images shown
    assert [p.name for p in kept] == ["checkpoint_000000000192", "checkpoint_000000000384"]
    assert read_progress(kept[0]).kimg == 0.192
    assert len(first.history) + len(second.history) == len(whole.history)
    assert first.history + second.history == whole.history
    final_whole = read_state(DirectorySession(tmp_path / "whole").checkpoints()[-1])
    final_split = read_state(DirectorySession(tmp_path / "split").checkpoints()[-1])
    for part in ("G", "D", "G_ema", "loss"):
        for name, tensor in final_whole[part].items():
            assert torch.equal(tensor, final_split[part][name]), f"{part}.{name} differs"
    assert final_whole["optimizer_G"]["state"].keys() == final_split["optimizer_G"]["state"].keys()


def test_progan_grows_through_every_resolution_with_fade_in(small_dataset, tmp_path):
    trainer = run(tiny_config(small_dataset, "progan"), tmp_path)
    state = trainer.state
    progress = state.progress
    assert progress.resolution == 16
    assert progress.batch_per_resolution == {4: 16, 8: 16, 16: 16}
    assert state.stage.fade_alpha == 1.0
    # G_ema trails G: close but not equal after training
    ema, live = state.G_ema.state_dict(), state.G.state_dict()
    assert any(not torch.equal(ema[k], live[k]) for k in live)


def test_nonfinite_losses_stop_the_run_and_keep_the_last_checkpoint(small_dataset, tmp_path):
    config = tiny_config(small_dataset, "wgan_gp", checkpoint_every_kimg=0.064)
    run(config, tmp_path, stop_kimg=0.064)
    huge = {"lr": 1e30}  # Adam steps of 1e30 overflow at once
    poisoned = tiny_config(
        small_dataset,
        "wgan_gp",
        model={"optimizers": {"G": huge, "D": huge}},
        checkpoint_every_kimg=0.064,
        max_nonfinite_steps=3,
    )
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        run(poisoned, tmp_path)
    kept = DirectorySession(tmp_path).checkpoints()
    assert [read_progress(p).kimg for p in kept] == [0.064]


def test_auto_batch_on_cpu_keeps_the_table_with_a_note(small_dataset, tmp_path, caplog):
    config = tiny_config(small_dataset, "wgan_gp", auto_batch=True, total_kimg=0.016)
    with caplog.at_level("INFO", logger="trainers.auto_batch"):
        trainer = run(config, tmp_path)
    assert "auto_batch: no GPU memory to measure" in caplog.text
    assert trainer.state.progress.batch_per_resolution == {32: 16}


@pytest.mark.parametrize("family", ["wgan_gp", "began", "progan"])
def test_bf16_autocast_path_trains_with_finite_losses(family, small_dataset, tmp_path):
    """The GPU recipe's autocast runs on CPU too: the same code path, checked without a GPU."""
    config = tiny_config(small_dataset, family, total_kimg=0.032, precision="bf16")  # slow on CPU
    trainer = RecordingTrainer(config, RunOptions(), DirectorySession(tmp_path))
    assert trainer.state.autocast_dtype == torch.bfloat16
    trainer.run()
    assert trainer.state.progress.nonfinite_steps == 0
    assert all(torch.isfinite(torch.tensor(list(step.values()))).all() for step in trainer.history)


def test_latest_complete_checkpoint_skips_torn_copies(tmp_path):
    """The fallback a restarted Ray worker group resumes from: newest by images shown, among
    folders that hold every file (a kill can interrupt a copy)."""
    import json
    from dataclasses import asdict

    from trainers.checkpoint import Progress, rng_name
    from trainers.run_storage import RunStorage

    storage, run = RunStorage(tmp_path), "run"

    def folder(name: str, images: int, writers: int, ranks: int, progress: str = "") -> Path:
        directory = tmp_path / run / name
        directory.mkdir(parents=True)
        for file in ("state.pt", "config.json"):
            (directory / file).write_bytes(b"x")
        for rank in range(ranks):
            (directory / rng_name(rank)).write_bytes(b"x")
        text = json.dumps(asdict(Progress(images=images, world_size=writers)))
        (directory / "progress.json").write_text(progress or text)
        return directory

    assert storage.latest_complete_checkpoint(run) is None
    folder("checkpoint_a", 320, writers=1, ranks=1)  # written before an elastic grow
    folder("checkpoint_b", 640, writers=2, ranks=2)
    folder("checkpoint_c", 960, writers=2, ranks=1)  # newer but rank 1's RNG never arrived
    folder("checkpoint_d", 1280, writers=2, ranks=2, progress='{"images": 9')  # cut short
    assert storage.latest_complete_checkpoint(run) == "checkpoint_b"
    assert storage.latest_run() == run


def test_resume_without_a_run_name_takes_the_run_written_last(tmp_path):
    """`--resume` alone continues the run whose last checkpoint was written last, not the one
    that trained longest (checkpoint names count images shown)."""
    import os

    from trainers.run_storage import RunStorage, checkpoint_name

    def progress_file(run: str, images: int) -> Path:
        directory = tmp_path / run / checkpoint_name(images)
        directory.mkdir(parents=True)
        (directory / "progress.json").write_text("{}")
        return directory / "progress.json"

    long, short = progress_file("long", 64_000), progress_file("short", 320)
    progress_file("long", 32_000)
    os.utime(long, (100, 100))
    os.utime(short, (200, 200))
    storage = RunStorage(tmp_path)
    assert storage.checkpoints("long") == ["checkpoint_000000032000", "checkpoint_000000064000"]
    assert storage.latest_run() == "short"
    os.utime(long, (300, 300))
    assert storage.latest_run() == "long"


@pytest.mark.parametrize("family", ["wgan_gp", "progan"])
def test_channels_last_path_trains_like_the_contiguous_layout(family, small_dataset, tmp_path):
    """The channels_last layout (the default, on CPU and CUDA): the same networks, data and
    steps end at the same weights as the contiguous layout, within float tolerance, and its
    checkpoint loads into a contiguous-layout run."""
    config = tiny_config(small_dataset, family, total_kimg=0.064)
    runs = {}
    for layout in (False, True):
        options = RunOptions(channels_last=layout)
        runs[layout] = RecordingTrainer(config, options, DirectorySession(tmp_path / str(layout)))
        runs[layout].run()  # ends with a checkpoint
    weight = next(p for p in runs[True].state.G.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    for name in ("G", "D"):
        default, last = (getattr(runs[layout].state, name).state_dict() for layout in (False, True))
        for key, value in default.items():
            torch.testing.assert_close(last[key], value, rtol=1e-4, atol=1e-5, msg=key)
    resumed = RecordingTrainer(config, RunOptions(), DirectorySession(tmp_path / "True"))
    torch.testing.assert_close(resumed.state.G.state_dict(), runs[False].state.G.state_dict(),
                               rtol=1e-4, atol=1e-5)  # fmt: skip


def test_progan_resets_adam_where_the_official_code_does():
    """The official train.py resets both optimizers whenever floor(lod) or ceil(lod) changes:
    at the start and at the end of every fade-in. On the paper's 4² -> 1024² schedule that is
    16 resets, at these kimg."""
    config = load_train_config(PRESETS / "paper" / "progan.yaml")
    family, schedule = config.family, config.growth_schedule
    kimg, resets, previous = 0.0, [], None
    while kimg < config.total_kimg:
        stage = schedule.at(kimg)
        if previous is not None and family.resets_optimizers(previous, stage):
            resets.append(round(kimg))
        previous, kimg = stage, kimg + 0.5  # a step of 512 images, the 4² batch
    starts = [600 + 1200 * i for i in range(8)]  # 600 kimg at 4², then fade 600 + stable 600
    assert resets == sorted(starts + [start + 600 for start in starts])
    assert len(resets) == 16


def test_progan_training_counts_its_adam_resets(small_dataset, tmp_path):
    """4² -> 16²: two fade-ins, so four resets (each fade-in's start and end)."""
    trainer = run(tiny_config(small_dataset, "progan"), tmp_path)
    assert trainer.state.progress.optimizer_resets == 4
    fixed = run(tiny_config(small_dataset, "wgan_gp", total_kimg=0.032), tmp_path / "wgan")
    assert fixed.state.progress.optimizer_resets == 0


def test_mirror_flips_are_seeded_and_flip_about_half(small_dataset, tmp_path):
    """Flips come from the run's seeded stream: two runs of one config see the same flipped
    images (equal losses), and the draw flips about half of the rows."""
    config = tiny_config(small_dataset, "wgan_gp", total_kimg=0.064, mirror_augment=True)
    first, again = run(config, tmp_path / "a"), run(config, tmp_path / "b")
    assert first.history == again.history
    plain = run(config.model_copy(update={"mirror_augment": False}), tmp_path / "c")
    assert plain.history != first.history
    generator = torch.Generator().manual_seed(0)
    flips = torch.rand(4096, generator=generator) < 0.5
    real = torch.arange(4096 * 3 * 2 * 2, dtype=torch.float32).view(4096, 3, 2, 2)
    mirrored = mirror(real, flips)
    assert torch.equal(mirrored[flips], real[flips].flip(3))
    assert torch.equal(mirrored[~flips], real[~flips])
    assert 0.45 < flips.float().mean() < 0.55
