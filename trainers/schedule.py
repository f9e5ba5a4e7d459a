"""Where training stands at a given kimg: resolution and fade-in weight (ProGAN's growing).

A fixed-resolution family is the one-resolution case: always (resolution, 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    resolution: int
    fade_alpha: float  # weight of the newest block: rises 0 → 1 during a fade-in, then 1.0


@dataclass(frozen=True)
class GrowthSchedule:
    resolutions: tuple[int, ...]  # trained in this order, e.g. (4, 8, 16, 32)
    fade_kimg: float  # length of each fade-in (every resolution but the first)
    stable_kimg: float  # length of each stable phase; the last one lasts to the end

    def at(self, kimg: float) -> Stage:
        """The stage after `kimg` thousand real images: the first resolution is stable for
        stable_kimg, every later one fades in for fade_kimg then is stable for stable_kimg."""
        start = self.stable_kimg
        for resolution in self.resolutions[1:]:
            if kimg < start:
                break
            if kimg < start + self.fade_kimg:
                return Stage(resolution, (kimg - start) / self.fade_kimg)
            start += self.fade_kimg + self.stable_kimg
        else:
            return Stage(self.resolutions[-1], 1.0)
        return Stage(self._previous(resolution), 1.0)

    def _previous(self, resolution: int) -> int:
        return self.resolutions[self.resolutions.index(resolution) - 1]
