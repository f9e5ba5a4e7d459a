"""The Inception v3 that FID is defined with, in plain torch: torchvision cannot be installed
next to the CPU build of torch this project pins, so we do not build on its Inception3.

This is the network of the TF 2015 FID code as pytorch-fid ports it (Inception3 with 1008
classes, no auxiliary classifier, and the pooling of TF's graph in the 35x35, 17x17 and 8x8
blocks), with the module names of torchvision's Inception3 so pytorch-fid's published weights
file loads unchanged. Features are the 2048-d average pool before the classifier ("pool3").
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from trainers.files import atomic_file

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = (
    f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILENAME}"
)
# pytorch-fid publishes only the first 8 hex digits (in the name, torch.hub's convention); the
# whole digest is the one independent projects that pin this 95,628,359-byte file agree on.
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"

WEIGHTS_ENV = "GANFORGE_INCEPTION_WEIGHTS"  # path of a weights file, used as is
CACHE_DIR_ENV = "GANFORGE_CACHE_DIR"  # folder of downloaded files; default ~/.cache/ganforge
OFFLINE_ENV = "GANFORGE_OFFLINE"  # "1": never download, fail at once when the file is missing
DOWNLOAD_TIMEOUT_S = 10  # to connect, and the longest stall between two reads

INPUT_SIZE = 299  # pixels; the size the TF graph was built for
FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the 2015 TF graph's classifier width, kept in the weights file


class InceptionWeightsUnavailable(RuntimeError):
    """The FID Inception weights file is not on this machine and cannot be downloaded."""


class ConvBlock(nn.Module):
    """Conv without bias, batch norm with TF's epsilon, ReLU (torchvision's BasicConv2d)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def average_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    """Stride-1 average pool that, as TF's, divides by the pixels inside the image only (the
    zero padding is not counted)."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b..5d): 64 + 64 + 96 + pool_channels channels out."""

    def __init__(self, in_channels: int, pool_channels: int):
        super().__init__()
        self.branch1x1 = ConvBlock(in_channels, 64, 1)
        self.branch5x5_1 = ConvBlock(in_channels, 48, 1)
        self.branch5x5_2 = ConvBlock(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBlock(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBlock(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBlock(96, 96, 3, padding=1)
        self.branch_pool = ConvBlock(in_channels, pool_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(average_pool_3x3(x)),
        ]
        return torch.cat(branches, 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a): 384 + 96 + in_channels channels out."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = ConvBlock(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBlock(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBlock(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBlock(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ]
        return torch.cat(branches, 1)


class InceptionC(nn.Module):
    """17x17 block (Mixed_6b..6e) with factorized 7x7 convs: 4 x 192 channels out."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBlock(in_channels, 192, 1)
        self.branch7x7_1 = ConvBlock(in_channels, c7, 1)
        self.branch7x7_2 = ConvBlock(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBlock(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBlock(in_channels, c7, 1)
        self.branch7x7dbl_2 = ConvBlock(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBlock(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBlock(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBlock(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = ConvBlock(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        for conv in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            branch7x7dbl = conv(branch7x7dbl)
        branches = [
            self.branch1x1(x),
            branch7x7,
            branch7x7dbl,
            self.branch_pool(average_pool_3x3(x)),
        ]
        return torch.cat(branches, 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a): 320 + 192 + in_channels channels out."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = ConvBlock(in_channels, 192, 1)
        self.branch3x3_2 = ConvBlock(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBlock(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBlock(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBlock(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBlock(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7x3 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = conv(branch7x7x3)
        branches = [
            self.branch3x3_2(self.branch3x3_1(x)),
            branch7x7x3,
            F.max_pool2d(x, 3, stride=2),
        ]
        return torch.cat(branches, 1)


class InceptionE(nn.Module):
    """8x8 block (Mixed_7b, 7c) with split 1x3 / 3x1 convs: 320 + 768 + 768 + 192 channels out.

    `max_pool`: the last block of the TF 2015 graph max-pools its pool branch where the paper
    (and torchvision) average-pool; FID features depend on it, so Mixed_7c keeps it."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBlock(in_channels, 320, 1)
        self.branch3x3_1 = ConvBlock(in_channels, 384, 1)
        self.branch3x3_2a = ConvBlock(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBlock(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBlock(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBlock(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBlock(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBlock(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBlock(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else average_pool_3x3(x)
        branches = [
            self.branch1x1(x),
            self.branch3x3_2a(branch3x3),
            self.branch3x3_2b(branch3x3),
            self.branch3x3dbl_3a(branch3x3dbl),
            self.branch3x3dbl_3b(branch3x3dbl),
            self.branch_pool(pooled),
        ]
        return torch.cat(branches, 1)


class FIDInception(nn.Module):
    """Images [N, 3, H, W] in [-1, 1] -> pool3 features [N, 2048] (float32, >= 0).

    Attribute names are torchvision's, so that the state dict is the published file's."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBlock(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBlock(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBlock(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBlock(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBlock(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_channels=32)
        self.Mixed_5c = InceptionA(256, pool_channels=64)
        self.Mixed_5d = InceptionA(288, pool_channels=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        # The classifier is not run; it is here so the published state dict loads strictly.
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FIDInception takes images [N, 3, H, W], got {list(images.shape)}")
        # pytorch-fid resizes [0, 1] images, then maps them to [-1, 1]; bilinear weights sum
        # to one, so resizing our [-1, 1] images directly gives the same pixels.
        x = F.interpolate(
            images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False
        )
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # [N, 64, 147, 147]
        x = F.max_pool2d(x, 3, stride=2)  # [N, 64, 73, 73]
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # [N, 192, 71, 71]
        x = F.max_pool2d(x, 3, stride=2)  # [N, 192, 35, 35]
        mixed_blocks = (
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d,  # 35x35
            self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,  # 17x17
            self.Mixed_7a, self.Mixed_7b, self.Mixed_7c,  # 8x8
        )  # fmt: skip
        for block in mixed_blocks:
            x = block(x)
        return x.mean(dim=(2, 3))  # [N, 2048, 8, 8] -> [N, 2048]


def cache_dir() -> Path:
    """${GANFORGE_CACHE_DIR}, default ~/.cache/ganforge: downloads and local copies."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "ganforge"


def _how_to_supply(cached: Path, url: str) -> str:
    return (
        f"Supply the file in one of two ways: set {WEIGHTS_ENV}=/path/to/{WEIGHTS_FILENAME}, "
        f"or put it at {cached} (the folder is ${CACHE_DIR_ENV}, default ~/.cache/ganforge). "
        f"Get it from {url} (sha256 {WEIGHTS_SHA256})."
    )


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _download(url: str, destination: Path) -> None:
    """Download `url` into `destination` atomically; only a file with WEIGHTS_SHA256 stays.
    Not torch.hub.download_url_to_file: it has no timeout, so a firewall that drops packets
    would hang an evaluation instead of skipping FID."""
    digest = hashlib.sha256()
    with (
        atomic_file(destination) as out,
        urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
    ):
        size = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=size, unit="B", unit_scale=True, desc=destination.name) as progress:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                progress.update(len(chunk))
        if digest.hexdigest() != WEIGHTS_SHA256:  # raised inside: the file is not kept
            raise InceptionWeightsUnavailable(
                f"the file downloaded from {url} has sha256 {digest.hexdigest()}, expected "
                f"{WEIGHTS_SHA256}; it was deleted. " + _how_to_supply(destination, url)
            )


def inception_weights_path(url: str = WEIGHTS_URL) -> Path:
    """Path of the FID Inception weights: ${GANFORGE_INCEPTION_WEIGHTS} if set, else the cached
    download (fetched from `url` and checked against WEIGHTS_SHA256 when missing).

    Raises InceptionWeightsUnavailable when the variable names a missing file, or when the file
    is not cached and cannot be downloaded (or ${GANFORGE_OFFLINE} forbids trying)."""
    configured = os.environ.get(WEIGHTS_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise InceptionWeightsUnavailable(
                f"{WEIGHTS_ENV}={configured} is not a file; point it at a copy of "
                f"{WEIGHTS_FILENAME} ({url}) or unset it to use the download cache"
            )
        return path
    cached = cache_dir() / WEIGHTS_FILENAME
    if cached.is_file():
        return cached
    if _offline():
        raise InceptionWeightsUnavailable(
            f"{cached} is missing and {OFFLINE_ENV} forbids downloading it. "
            + _how_to_supply(cached, url)
        )
    try:
        _download(url, cached)
    except (urllib.error.URLError, OSError) as error:  # HTTP errors, DNS, refused, timeouts
        raise InceptionWeightsUnavailable(
            f"could not download {url}: {error}. " + _how_to_supply(cached, url)
        ) from error
    return cached


def load_fid_inception(device: torch.device | str = "cpu") -> FIDInception:
    """The FID Inception with the published weights, in eval mode and without gradients.

    Raises InceptionWeightsUnavailable as inception_weights_path does."""
    model = FIDInception()
    state = torch.load(inception_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device)
