"""The GPU check (`python -m benchmarks.gpu`) kept from rotting: its --dry-run runs the same
code on the CPU (gloo) at toy sizes and writes every figure the GPU run writes."""

from __future__ import annotations

import json
import subprocess
import sys


def test_gpu_check_dry_run_writes_every_figure(small_dataset, tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--dry-run", "--data", str(small_dataset),
         "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True
    assert set(report["families"]) == {"wgan_gp", "began", "progan"}
    for name, family in report["families"].items():
        for precision in ("fp32", "bf16"):
            for figures in family["per_resolution"][precision].values():
                assert figures["images_per_s"] > 0 and figures["steps"] >= 2
        assert family["bf16_vs_fp32_speed"] and family["auto_batch"]
        if name != "began":
            agreement = family["gradient_agreement"]
            assert agreement["penalty_fp32"]["cosine"] > 0.99
            assert agreement["penalty_fp32"]["relative_error"] >= 0
    assert list(report["families"]["progan"]["per_resolution"]["fp32"]) == ["4", "8", "16"]


def test_gpu_check_without_cuda_says_how_to_check_on_the_cpu():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "no CUDA device here; --dry-run" in result.stderr
