"""Benchmark 6: sample quality of the quickstart's registered generators (what `make run`
left in the registry at `models:/ganforge-<family>-quickstart-32@champion`), each next to two
baselines measured in the same run on the same metric:

  - the real-vs-real floor: the dataset's images 1,000..1,999 against its first 1,000 (what a
    perfect generator would score);
  - the mean-image baseline: the dataset's mean image plus small noise (a fully collapsed
    generator that still gets the colours right).

swd1k (×10³, lower is better) and the collapse check: the per-pixel standard deviation over
1,000 samples as a fraction of the real images' (1.0: as varied as the data). Targets of the
quickstart: swd1k ≤ 60 and that fraction ≥ 0.6 for every family.

Beside them, the weakest colour axis: the smallest variance of the samples' pixel colours
along any direction in RGB space (the least eigenvalue of their 3×3 covariance), as a fraction
of the data's. The synthetic faces' colours vary along every axis (their largest eigenvalue is
about 3x their least); a generator whose pixels all lie near one plane of RGB space
(backgrounds along one pair of opposite hues) scores near 0 however good its swd1k's 32² level.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import Row

DATASET = Path("data/quickstart")
RESOLUTION = 32
FAMILIES = ("wgan_gp", "began", "progan")
TARGET_SWD = 60.0
TARGET_STD_FRACTION = 0.6
COUNT = 1000
MEAN_IMAGE_NOISE = 0.05  # σ of the noise on the mean image, in the [-1, 1] pixel range


def _real_images(start: int, count: int):
    import torch

    from trainers.data.reader import real_chunks

    cpu = torch.device("cpu")
    chunks = real_chunks(DATASET, RESOLUTION, cpu, chunk_size=count, limit=start + count)
    return torch.cat([images for _, images in chunks])[start:]


class _Images:
    """A 'generator' replaying fixed images, picked by a U[-1, 1] latent (the floor)."""

    def __init__(self, images):
        self.images = images

    def __call__(self, latents):
        index = ((latents[:, 0] + 1) / 2 * len(self.images)).long().clamp(0, len(self.images) - 1)
        return self.images[index]


class _MeanImage(_Images):
    """The mean real image plus N(0, MEAN_IMAGE_NOISE²) per pixel, from a N(0, 1) latent."""

    def __call__(self, latents):
        return (self.images + MEAN_IMAGE_NOISE * latents.view(-1, *self.images.shape[1:])).clamp(
            -1, 1
        )


def weakest_colour_axis(images) -> float:
    """Least variance of the pixels of images [N, 3, H, W] along a direction of RGB space."""
    import torch

    pixels = images.permute(1, 0, 2, 3).flatten(1).double()  # [3, N·H·W]
    return float(torch.linalg.eigvalsh(torch.cov(pixels))[0])


def measure(sampler, real_std: float, real_colour_axis: float) -> dict:
    """swd1k, the per-pixel standard deviation fraction and the weakest colour axis fraction
    of COUNT samples."""
    import torch

    from trainers.metrics.driver import evaluate
    from trainers.metrics.evaluation import Evaluation

    evaluation = Evaluation(sampler, DATASET, seed=0)
    swd = evaluate(["swd1k"], evaluation)["swd1k"]
    images = torch.cat([chunk for _, chunk in evaluation.fake_chunks(COUNT)])
    return {
        "swd1k": swd,
        "pixel_std_fraction": images.std(0).mean().item() / real_std,
        "weakest_colour_axis_fraction": weakest_colour_axis(images) / real_colour_axis,
    }


def run(tracking_uri: str) -> tuple[dict, list[Row]]:
    from pipelines.registry import RegistryError, load_generator
    from trainers.prior import LatentPrior
    from trainers.sampling import Sampler

    first = _real_images(0, COUNT)
    real = first.std(0).mean().item(), weakest_colour_axis(first)
    held_out = _real_images(COUNT, COUNT)
    floor = measure(Sampler(_Images(held_out), LatentPrior("uniform", 1), RESOLUTION), *real)
    pixels = 3 * RESOLUTION * RESOLUTION
    mean = first.mean(0, keepdim=True)
    collapsed = measure(Sampler(_MeanImage(mean), LatentPrior("normal", pixels), RESOLUTION),
                        *real)  # fmt: skip
    payload = {
        "metric": "swd1k at 32², x10^3; pixel_std_fraction: per-pixel std / the real images'; "
        "weakest_colour_axis_fraction: least pixel-colour variance along an RGB direction / the "
        "real images'",
        "real_vs_real": floor,
        "mean_image": collapsed,
        "families": {},
        "targets": {
            "swd1k_at_most": TARGET_SWD,
            "pixel_std_fraction_at_least": TARGET_STD_FRACTION,
        },
    }
    rows = []
    for family in FAMILIES:
        uri = f"models:/ganforge-{family}-quickstart-{RESOLUTION}@champion"
        try:
            loaded = load_generator(uri, tracking_uri)
        except RegistryError:
            print(f"quality: {family} skipped, no {uri} (run `make run` first)")
            continue
        found = measure(loaded.sampler, *real)
        meets = found["swd1k"] <= TARGET_SWD and found["pixel_std_fraction"] >= TARGET_STD_FRACTION
        payload["families"][family] = found | {"model": uri, "meets_target": meets}
        rows.append(
            Row(
                f"quality {family} swd1k (std fraction, weakest colour axis)",
                f"{found['swd1k']:.1f} ({found['pixel_std_fraction']:.2f}, "
                f"{found['weakest_colour_axis_fraction']:.2f})",
                f"floor {floor['swd1k']:.1f}, mean image {collapsed['swd1k']:.1f}",
                None,
                None,
                meets,
            )
        )
    return payload, rows
