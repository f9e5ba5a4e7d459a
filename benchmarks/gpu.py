"""The GPU check, ready for a machine with one CUDA device: `python -m benchmarks.gpu`.

Every family trains a few kimg on CUDA (an nccl process group of one rank, the loop's own code
paths) in fp32 and in bf16; ProGAN at paper widths grows 4² → 256². Written to
benchmarks/results/gpu.json:
  - images/s and peak memory per resolution, per family and precision;
  - the bf16/fp32 speed ratio per family;
  - the gradient agreement of bf16 against fp32 for the D step (the penalty kept in
    float32, as training does) and what a bf16 penalty would have given (why it is kept);
  - the batch per resolution `auto_batch` picks.
About 5 minutes on one H100-class GPU. `--dry-run` runs the same code on the CPU (gloo) at toy
sizes in seconds, so the test suite keeps it from rotting.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "train" / "paper"
RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"

# (preset, overrides): a few kimg each; ProGAN at paper widths, 4² → 256², 1 kimg per phase
FULL = {
    "wgan_gp": ("wgan_gp.yaml", ["total_kimg=4", "batch_per_resolution={64: 64}"]),
    "began": ("began.yaml", ["total_kimg=2", "batch_per_resolution={64: 16}"]),
    "progan": (
        "progan.yaml",
        [
            "model.resolution=256",
            "model.fade_kimg=1",
            "model.stable_kimg=1",
            "total_kimg=14",  # 1 stable at 4², then fade + stable at 8² ... 256²
            "batch_per_resolution={4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 32, 256: 32}",
        ],
    ),
}
DRY = {
    "wgan_gp": (
        "wgan_gp.yaml",
        ["total_kimg=0.064", "model.resolution=32", "model.channels=4",
         "batch_per_resolution={32: 16}", "model.n_critic=2"],
    ),
    "began": (
        "began.yaml",
        ["total_kimg=0.032", "model.resolution=32", "model.channels=4", "model.latent_dim=8",
         "model.generator_channels=4",
         "batch_per_resolution={32: 16}"],
    ),
    "progan": (
        "progan.yaml",
        ["model.resolution=16", "model.fmap_base=64", "model.fmap_max=16", "model.latent_dim=16",
         "model.fade_kimg=0.032", "model.stable_kimg=0.032", "total_kimg=0.16",
         "batch_per_resolution={4: 16, 8: 16, 16: 16}"],
    ),
}  # fmt: skip
COMMON = ["log_every_kimg=1000", "sample_every_kimg=1000", "checkpoint_every_kimg=1000",
          "metrics=[]", "loader_processes=2", "workers=1"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config(family: str, table: dict, data: str, precision: str, extra=()):
    from trainers.config import load_train_config

    preset, overrides = table[family]
    return load_train_config(
        PRESETS / preset, [*overrides, *COMMON, f"data={data}", f"precision={precision}", *extra]
    )


def train_figures(config, device, work: Path) -> dict:
    """Images/s (after each resolution's first step, which compiles kernels) and peak memory
    per resolution of one short training."""
    import torch

    from trainers.loop import DirectorySession, RunOptions, Trainer

    per_resolution: dict[int, dict] = {}

    class Timed(Trainer):
        def step(self, real, stage):
            record = per_resolution.setdefault(stage.resolution, {"images": 0, "seconds": 0.0})
            first = record.get("steps", 0) == 0
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            result = super().step(real, stage)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                record["peak_memory_bytes"] = max(
                    record.get("peak_memory_bytes", 0), torch.cuda.max_memory_allocated(device)
                )
            record["steps"] = record.get("steps", 0) + 1
            if not first:
                record["images"] += len(real)
                record["seconds"] += time.perf_counter() - started
            return result

    options = RunOptions(device=device)
    trainer = Timed(config, options, DirectorySession(work))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.run()
    for record in per_resolution.values():
        record["images_per_s"] = record["images"] / max(record["seconds"], 1e-9)
    return {str(r): record for r, record in sorted(per_resolution.items())}


def penalty_agreement(config, device) -> dict:
    """One D step's gradients under bf16 against fp32 on the same batch and fakes:
    with the penalty in float32 (training's way) and with a bf16 penalty."""
    import torch
    import torch.nn.functional as F

    from trainers.losses.base import Phase, StepState

    family = config.family
    torch.manual_seed(0)
    generator = family.build_generator().to(device)
    discriminator = family.build_discriminator().to(device)
    loss = family.build_loss(generator, discriminator)
    resolution = family.resolutions[-1]
    real = torch.rand(16, 3, resolution, resolution, device=device) * 2 - 1
    with torch.no_grad():
        fake = generator(family.prior.sample(16, torch.Generator().manual_seed(1), device),
                         resolution).float()  # fmt: skip
    loss.generate = lambda n, state, device: fake  # the same fakes in every precision

    def gradients(dtype, penalty_full_precision: bool) -> torch.Tensor:
        discriminator.zero_grad(set_to_none=True)
        original = loss.discriminate

        def discriminate(images, state, full_precision=False):
            return original(images, state, full_precision and penalty_full_precision)

        loss.discriminate = discriminate
        state = StepState(resolution, 1.0, torch.Generator(device).manual_seed(2), dtype)
        loss.accumulate_gradients(Phase("D", "D"), real, state)
        loss.discriminate = original
        # the blocks this resolution runs (ProGAN's lower fromRGBs take no part)
        return torch.cat(
            [p.grad.flatten().float() for p in discriminator.parameters() if p.grad is not None]
        )

    reference = gradients(None, True)
    result = {}
    for name, full in (("penalty_fp32", True), ("penalty_bf16", False)):
        other = gradients(torch.bfloat16, full)
        result[name] = {
            "cosine": F.cosine_similarity(reference, other, dim=0).item(),
            "relative_error": ((other - reference).norm() / reference.norm()).item(),
        }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, seconds")
    parser.add_argument("--data", default=None, help="dataset folder (default: build a small one)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON file ({RESULTS})")
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device here; --dry-run checks the same code on the CPU")
    device = torch.device("cpu" if args.dry_run else "cuda:0")
    table = DRY if args.dry_run else FULL
    with tempfile.TemporaryDirectory(prefix="ganforge-gpu-") as tmp:
        work = Path(tmp)
        data = args.data or _small_dataset(work / "data", 32 if args.dry_run else 256)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        dist.init_process_group(
            "gloo" if args.dry_run else "nccl",
            init_method=f"tcp://127.0.0.1:{_free_port()}",
            rank=0,
            world_size=1,
        )
        try:
            report = _measure(table, data, device, work)
        finally:
            dist.destroy_process_group()
    report |= {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "dry_run": args.dry_run,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({family: report["families"][family]["bf16_vs_fp32_speed"]
                      for family in report["families"]}, indent=2))  # fmt: skip
    print(f"written to {args.out}")
    return 0


def _measure(table: dict, data: str, device, work: Path) -> dict:
    from trainers.auto_batch import choose_batch_per_resolution

    families = {}
    for family in table:
        runs = {}
        for precision in ("fp32", "bf16"):
            config = _config(family, table, data, precision)
            runs[precision] = train_figures(config, device, work / f"{family}-{precision}")
        speed = {
            r: runs["bf16"][r]["images_per_s"] / runs["fp32"][r]["images_per_s"]
            for r in runs["fp32"]
        }
        families[family] = {
            "per_resolution": runs,
            "bf16_vs_fp32_speed": speed,
            "auto_batch": choose_batch_per_resolution(
                _config(family, table, data, "bf16", ["auto_batch=true"]), device
            ),
        }
        if family != "began":  # the families with the gradient penalty
            families[family]["gradient_agreement"] = penalty_agreement(
                _config(family, table, data, "bf16"), device
            )
    return {"families": families}


def _small_dataset(out: Path, max_resolution: int) -> str:
    """Synthetic faces at every resolution up to max_resolution, built as users build them."""
    import subprocess
    import sys

    ganforge = Path(sys.executable).parent / "ganforge"
    subprocess.run(
        [str(ganforge), "data", "build", "--source", "synthetic", "--out", str(out),
         "--num-images", "256", "--max-resolution", str(max_resolution), "--shard-size", "64"],
        check=True,
    )  # fmt: skip
    return str(out)


if __name__ == "__main__":
    raise SystemExit(main())
