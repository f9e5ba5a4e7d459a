"""Multi-scale sliced Wasserstein distance (ProGAN, Karras et al. 2018, appendix D).

Each image is split into a Laplacian pyramid from its resolution down to 16²; from every level
come random 7×7 neighbourhoods of the 3 colour channels (the descriptors). Per level, each
descriptor set is normalized per channel by its own mean and standard deviation, and the two
sets are compared by the sliced Wasserstein distance: the mean, over random unit directions, of
the 1-D Wasserstein distance between the sorted projections. Values are reported ×10³, as in the
paper and its code (4 repeats × 128 directions = 512 projections, 128 descriptors per image per
level).

The real side's descriptors are computed once (swd_descriptors) and reused against every set of
generated images. Pure torch: everything runs on the images' device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainers.data.reader import to_model_range

NEIGHBORHOOD_SIZE = 7  # pixels per side of a descriptor
DESCRIPTORS_PER_IMAGE = 128  # per image and per pyramid level
DIRECTIONS = 128  # random projections per repeat
REPEATS = 4
LOWEST_RESOLUTION = 16  # the pyramid's coarsest level
SCALE = 1e3  # reported values are SWD × 10³

# The 5-tap binomial filter of cv2.pyrDown/pyrUp; the 5×5 kernel is its outer product.
_BINOMIAL_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def _blur(images: torch.Tensor, gain: float) -> torch.Tensor:
    """The 5×5 binomial filter × gain on each channel of [N, C, H, W], mirrored borders (edge
    pixel not repeated: scipy.ndimage's "mirror", cv2's default). Separable, as sums of shifted
    copies: several times faster than conv2d on CPU at these sizes."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    rows = sum(tap * padded[:, :, k : k + height, :] for k, tap in enumerate(_BINOMIAL_TAPS))
    return sum(tap * gain * rows[:, :, :, k : k + width] for k, tap in enumerate(_BINOMIAL_TAPS))


def pyramid_down(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H/2, W/2]: blur, keep even pixels (cv2.pyrDown)."""
    return _blur(images, 1.0)[:, :, ::2, ::2]


def pyramid_up(images: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, 2H, 2W]: zeros between pixels, blur ×4 (cv2.pyrUp)."""
    n, c, h, w = images.shape
    spread = images.new_zeros(n, c, 2 * h, 2 * w)
    spread[:, :, ::2, ::2] = images
    return _blur(spread, 4.0)


def laplacian_pyramid(images: torch.Tensor, num_levels: int) -> list[torch.Tensor]:
    """Float [N, C, H, W] -> num_levels tensors, finest first: level i is [N, C, H/2^i, W/2^i];
    every level but the last holds the detail lost by pyramid_down, the last the blurred rest.
    The image is the sum of all levels, each brought back up with pyramid_up."""
    levels = []
    gaussian = images
    for _ in range(num_levels - 1):
        smaller = pyramid_down(gaussian)
        levels.append(gaussian - pyramid_up(smaller))
        gaussian = smaller
    levels.append(gaussian)
    return levels


def level_resolutions(resolution: int) -> list[int]:
    """Pyramid level resolutions, finest first: 256 -> [256, 128, 64, 32, 16]."""
    resolutions = []
    while resolution >= LOWEST_RESOLUTION:
        resolutions.append(resolution)
        resolution //= 2
    return resolutions


def swd_descriptors(
    images: torch.Tensor,
    descriptors_per_image: int = DESCRIPTORS_PER_IMAGE,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Random neighbourhoods of every Laplacian level of a batch of images.

    images: [N, 3, R, R], float in [-1, 1] (the generator's range) or uint8 in [0, 255]
    (converted to [-1, 1]); R a power of two >= 16.
    Returns one float32 tensor [N * descriptors_per_image, 3, 7, 7] per level, finest (R²)
    first, down to 16², unnormalized, so batches concatenate per level:
    `[torch.cat(parts) for parts in zip(*per_batch)]`. Positions are drawn with `generator`
    (torch's global RNG if None).
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"SWD needs RGB images [N, 3, R, R], got {list(images.shape)}")
    resolution = images.shape[2]
    if resolution < LOWEST_RESOLUTION or resolution & (resolution - 1):
        raise ValueError(
            f"SWD needs a power-of-two resolution >= {LOWEST_RESOLUTION}, got {resolution}"
        )
    images = to_model_range(images) if images.dtype == torch.uint8 else images.float()
    num_images = images.shape[0]
    count = num_images * descriptors_per_image
    radius = NEIGHBORHOOD_SIZE // 2
    offsets = torch.arange(-radius, radius + 1, device=images.device)
    # Descriptor k comes from image k // descriptors_per_image.
    image_index = torch.arange(num_images, device=images.device).repeat_interleave(
        descriptors_per_image
    )
    sample_device = generator.device if generator is not None else images.device
    descriptors = []
    for level in laplacian_pyramid(images, len(level_resolutions(resolution))):
        size = level.shape[-1]
        # Centres whose whole neighbourhood lies inside the level: [radius, size - radius).
        centres = torch.randint(
            radius, size - radius, (2, count), generator=generator, device=sample_device
        ).to(images.device)
        rows = (centres[0, :, None] + offsets)[:, None, :, None]  # [count, 1, 7, 1]
        columns = (centres[1, :, None] + offsets)[:, None, None, :]  # [count, 1, 1, 7]
        channels = torch.arange(3, device=images.device)[None, :, None, None]  # [1, 3, 1, 1]
        descriptors.append(level[image_index[:, None, None, None], channels, rows, columns])
    return descriptors


def _normalized(descriptors: torch.Tensor) -> torch.Tensor:
    """[n, 3, 7, 7] -> [n, 147]: zero mean and unit standard deviation per colour channel."""
    std, mean = torch.std_mean(descriptors, dim=(0, 2, 3), keepdim=True, correction=0)
    # A flat level (e.g. a collapsed generator's uniform images) gives zeros, not NaN.
    return ((descriptors - mean) / std.clamp(min=1e-8)).flatten(1)


def _sliced_wasserstein(
    a: torch.Tensor,
    b: torch.Tensor,
    directions: int,
    repeats: int,
    generator: torch.Generator | None,
) -> float:
    """Mean over random unit directions of the mean gap between sorted projections, [n, d]."""
    sample_device = generator.device if generator is not None else a.device
    total = 0.0
    for _ in range(repeats):
        projection = torch.randn(
            a.shape[1], directions, generator=generator, device=sample_device
        ).to(a.device)
        projection /= projection.norm(dim=0, keepdim=True)  # unit columns
        # [directions, n]: sorting contiguous rows is 2x faster than down strided columns
        a_sorted = (projection.T @ a.T).sort(dim=1).values
        b_sorted = (projection.T @ b.T).sort(dim=1).values
        total += float((a_sorted - b_sorted).abs().mean(dtype=torch.float64))
    return total / repeats


def sliced_wasserstein_distance(
    real_descriptors: list[torch.Tensor],
    fake_descriptors: list[torch.Tensor],
    directions: int = DIRECTIONS,
    repeats: int = REPEATS,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """SWD ×10³ per pyramid level between two outputs of swd_descriptors (each possibly the
    per-level concatenation of several batches) of equal sizes.

    Returns {"swd_<resolution>": ..., "swd_avg": mean over levels}, e.g. swd_256 ... swd_16.
    Directions are drawn with `generator` (torch's global RNG if None).
    """
    if not real_descriptors or len(real_descriptors) != len(fake_descriptors):
        raise ValueError(
            f"real descriptors have {len(real_descriptors)} pyramid levels, fake ones "
            f"{len(fake_descriptors)}: compute both from images of the same resolution"
        )
    results = {}
    for resolution, real, fake in zip(
        level_resolutions(LOWEST_RESOLUTION * 2 ** (len(real_descriptors) - 1)),
        real_descriptors,
        fake_descriptors,
        strict=True,
    ):
        if real.shape != fake.shape:
            raise ValueError(
                f"at {resolution}² there are {real.shape[0]} real and {fake.shape[0]} fake "
                "descriptors: compute both sides from the same number of images and "
                "descriptors_per_image"
            )
        distance = _sliced_wasserstein(
            _normalized(real), _normalized(fake.to(real.device)), directions, repeats, generator
        )
        results[f"swd_{resolution}"] = distance * SCALE
    results["swd_avg"] = sum(results.values()) / len(results)
    return results
