"""The build_dataset stage's typed config; mirrors the `build_dataset` section of params.yaml."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainers.data.format import check_resolution


class SourceKind(StrEnum):
    synthetic = "synthetic"  # embedded procedural faces, no download
    folder = "folder"  # a folder, .zip or .tar of images (e.g. a pre-built CelebA-HQ)
    celeba = "celeba"  # CelebA in-the-wild images + landmarks -> CelebA-HQ-style 1024² crops


# Per source, the values of options not given: synthetic renders 2048 faces, folder takes every
# input, celeba keeps the best 30,000 (CelebA-HQ's count) by quality score at 1024².
SOURCE_DEFAULTS = {
    SourceKind.synthetic: {"num_images": 2048},
    SourceKind.folder: {"num_images": None},
    SourceKind.celeba: {"num_images": 30_000, "max_resolution": 1024},
}


class BuildDatasetConfig(BaseModel):
    """Everything that decides the bytes of a dataset (and nothing that doesn't: workers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: SourceKind = SourceKind.synthetic
    input: Path | None = None  # folder/zip/tar of images for folder and celeba; unused by synthetic
    landmarks: Path | None = None  # celeba: list_landmarks_celeba.txt (CelebA's 5-point file)
    image_list: Path | None = None  # celeba: CelebA-HQ's image_list.txt, to take exactly its images
    out: Path = Path("data/quickstart")
    # synthetic: images to render; folder: the first N inputs in name order; celeba: the best N by
    # quality score (ignored with image_list). None: SOURCE_DEFAULTS of the source.
    num_images: int | None = Field(default=None, ge=1)
    # the pyramid is every power of two from 4 up to this (not given: SOURCE_DEFAULTS, else 128)
    max_resolution: int = 128
    shard_size: int = Field(default=256, ge=1)  # samples per shard, at every resolution
    max_reject_fraction: float = Field(default=0.01, ge=0.0, le=1.0)  # build fails above it
    seed: int = Field(default=0, ge=0)  # fixes the synthetic faces and the sample order
    png_compress_level: int = Field(default=6, ge=0, le=9)  # zlib level; 6 = Pillow default

    @field_validator("max_resolution")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        return check_resolution(value)

    @model_validator(mode="before")
    @classmethod
    def _source_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        try:
            source = SourceKind(data.get("source", SourceKind.synthetic))
        except ValueError:
            return data  # the field's own validation names the allowed values
        unset = {k: v for k, v in SOURCE_DEFAULTS[source].items() if data.get(k) is None}
        return data | unset

    @model_validator(mode="after")
    def _source_needs_input(self) -> BuildDatasetConfig:
        if self.source is not SourceKind.synthetic and self.input is None:
            raise ValueError(
                f"source '{self.source}' needs --input PATH (a folder, .zip or .tar of images)"
            )
        if self.source is SourceKind.celeba and self.landmarks is None:
            raise ValueError("source 'celeba' needs --landmarks FILE (list_landmarks_celeba.txt)")
        if self.source is not SourceKind.celeba and (self.landmarks or self.image_list):
            raise ValueError("--landmarks and --image-list are for source 'celeba' only")
        return self

    def params(self) -> dict:
        """What the manifest records: every field but the locations, which differ per machine
        while the content (covered by the source digest) does not."""
        return self.model_dump(mode="json", exclude={"input", "out", "landmarks", "image_list"})
