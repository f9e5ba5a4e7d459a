"""The build_dataset stage's typed config; mirrors the `build_dataset` section of params.yaml."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from trainers.data.format import MAX_RESOLUTION, MIN_RESOLUTION, check_resolution
from trainers.data.storage import S3Url, is_s3_url


def _location(value: Any) -> Any:
    """s3://BUCKET/PREFIX as an S3Url (a Path would fold its "//"); anything else is a Path."""
    return S3Url.parse(value) if isinstance(value, str) and is_s3_url(value) else value


# A local path, or s3://BUCKET/KEY read and written through boto3 (trainers.data.storage).
Location = Annotated[Path | S3Url, BeforeValidator(_location)]


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

    # Each description is the option's help in `ganforge data build --help` (option_help adds
    # the default), the one text for both the command line and the params.yaml section.
    source: SourceKind = Field(
        SourceKind.synthetic,
        description="Where images come from: 'synthetic' (embedded procedural faces, no "
        "download), 'folder' (a folder, .zip or .tar of jpg/png/webp/bmp/gif/tiff, e.g. a "
        "CelebA-HQ download named by index) or 'celeba' (CelebA in-the-wild images + --landmarks: "
        "CelebA-HQ-style oriented face crops, the best --num-images by quality score).",
    )
    input: Location | None = Field(
        None,
        description="Folder/zip/tar of images for --source folder or celeba (img_celeba/), or "
        "s3://BUCKET/PREFIX/ of image objects.",
    )
    landmarks: Location | None = Field(
        None,
        description="celeba: CelebA's 5-point landmark file (list_landmarks_celeba.txt), a path "
        "or s3://BUCKET/KEY.",
    )
    image_list: Location | None = Field(
        None,
        description="celeba: CelebA-HQ's image_list.txt (a path or s3://BUCKET/KEY); takes "
        "exactly its 30,000 images, keyed by their CelebA-HQ index, instead of the best by score "
        "(the deltas are not needed).",
    )
    out: Location = Field(
        Path("data/quickstart"),
        description="Dataset folder to write, or s3://BUCKET/PREFIX: the build's tasks write "
        "their spools and shards there directly (with checksums), the manifest last.",
    )
    num_images: int | None = Field(
        None,
        ge=1,
        description="Synthetic: images to render. Folder: use the first N in name order (all when "
        "not given). Celeba: keep the best N by quality score (ignored with --image-list).",
    )
    max_resolution: int = Field(
        128,
        description=f"Largest power of two in the pyramid ({MIN_RESOLUTION}..{MAX_RESOLUTION}), "
        f"which holds every power of two from {MIN_RESOLUTION} up to it.",
    )
    max_pixels: int = Field(
        8192 * 8192,
        ge=1,
        description="Refuse an input whose header declares more pixels than this (too_large), "
        "before decoding it; a file of more than 8 bytes per allowed pixel (+16 MiB) is not read.",
    )
    shard_size: int = Field(256, ge=1, description="Samples per shard, at every resolution.")
    max_reject_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="Fail when more inputs than this are rejected."
    )
    seed: int = Field(0, ge=0, description="Fixes the synthetic faces and the sample order.")
    png_compress_level: int = Field(
        6, ge=0, le=9, description="zlib level of the PNGs (0-9; the default is Pillow's)."
    )

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
        while the content (covered by the source digest) does not, and max_pixels for the
        synthetic source, which decodes no input."""
        locations = {"input", "out", "landmarks", "image_list"}
        unused = {"max_pixels"} if self.source is SourceKind.synthetic else set()
        return self.model_dump(mode="json", exclude=locations | unused)

    @classmethod
    def option_help(cls, name: str) -> str:
        """A field's description and its default, per source where the sources differ:
        '... (default: 128; celeba: 1024)'."""
        field = cls.model_fields[name]
        defaults = [str(field.default)] if field.default is not None else []
        defaults += [
            f"{source}: {values[name]}"
            for source, values in SOURCE_DEFAULTS.items()
            if values.get(name, field.default) not in (field.default, None)
        ]
        if not defaults:
            return field.description
        return f"{field.description} (default: {'; '.join(defaults)})"
