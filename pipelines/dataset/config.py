"""The build_dataset stage's typed config; mirrors the `build_dataset` section of params.yaml."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainers.data.format import check_resolution


class SourceKind(StrEnum):
    synthetic = "synthetic"  # embedded procedural faces, no download
    folder = "folder"  # a folder, .zip or .tar of images (e.g. a pre-built CelebA-HQ)


class BuildDatasetConfig(BaseModel):
    """Everything that decides the bytes of a dataset (and nothing that doesn't: workers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: SourceKind = SourceKind.synthetic
    input: Path | None = None  # folder/zip/tar for the folder source; unused by synthetic
    out: Path = Path("data/quickstart")
    # synthetic: images to render; folder: take the first N inputs in path order (None = all)
    num_images: int | None = Field(default=2048, ge=1)
    max_resolution: int = 128  # the pyramid is every power of two from 4 up to this
    shard_size: int = Field(default=256, ge=1)  # samples per shard, at every resolution
    max_reject_fraction: float = Field(default=0.01, ge=0.0, le=1.0)  # build fails above it
    seed: int = Field(default=0, ge=0)  # fixes the synthetic faces and the sample order
    png_compress_level: int = Field(default=6, ge=0, le=9)  # zlib level; 6 = Pillow default

    @field_validator("max_resolution")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        return check_resolution(value)

    @model_validator(mode="after")
    def _source_needs_input(self) -> BuildDatasetConfig:
        if self.source is SourceKind.folder and self.input is None:
            raise ValueError("source 'folder' needs --input PATH (a folder, .zip or .tar)")
        if self.source is SourceKind.synthetic and self.num_images is None:
            raise ValueError("source 'synthetic' needs --num-images N")
        return self

    def params(self) -> dict:
        """What the manifest records: every field but the locations, which differ per machine
        while the content (covered by the source digest) does not."""
        return self.model_dump(mode="json", exclude={"input", "out"})
