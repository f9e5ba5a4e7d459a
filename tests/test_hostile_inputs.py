"""A hostile corpus, built here, through `ganforge data build` as a user runs it: every file
ends accepted, converted, rejected with a reason, ignored or skipped; nothing is written
outside --out; the build's peak memory stays bounded (the pixel bomb would take 4.8 GB); and a
rerun is byte-identical. The same for archives' members and the objects under an S3 prefix
(moto in server mode)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import tree_bytes
from tests.images import pixel_bomb, pixels, save
from trainers.data.storage import S3Url, client

MAX_RESOLUTION = 32
S3_BUCKET = "ganforge-hostile"
# The build's largest process (the CLI with Prefect, or a pool worker), in KiB: decoding the
# bomb alone would take 4.8 GB.
PEAK_RSS_BOUND_KIB = 1024 * 1024
# `ganforge ...` in a child, printing the largest resident size of its processes (KiB) last
PEAK_RSS = (
    "import resource, subprocess, sys; status = subprocess.run(sys.argv[1:]).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(status)"
)


def png(seed: int, size=(48, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(size, seed)).save(buffer, "PNG")
    return buffer.getvalue()


def hostile_folder(root: Path) -> dict[str, str]:
    """The corpus; returns {path: what becomes of it}: 'accepted', 'converted', a reject reason,
    'ignored' (not named like an image) or 'skipped' (a link to a folder)."""
    for i in range(4):
        (root / f"plain/{i}.png").parent.mkdir(parents=True, exist_ok=True)
        (root / f"plain/{i}.png").write_bytes(png(i))
    (root / "bomb.png").write_bytes(pixel_bomb())
    corrupt = bytearray(png(10))
    corrupt[60] ^= 0xFF  # inside the image data: its chunk's CRC no longer matches
    (root / "bad_crc.png").write_bytes(bytes(corrupt))
    jpeg = io.BytesIO()
    Image.fromarray(pixels((48, 48), 11)).save(jpeg, "JPEG")
    (root / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    frames = [Image.fromarray(pixels((48, 48), seed)) for seed in (12, 13, 14)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    grey = np.asarray(Image.fromarray(pixels((48, 48), 15)).convert("L"))
    deep = grey.astype(np.uint16) * 257  # the 8-bit values on 16 bits
    Image.fromarray(deep).save(root / "deep_16bit.tif")
    save(root / "panorama.png", Image.fromarray(pixels((6000, 40), 16)))  # 150:1
    save(root / "icc.jpg", Image.fromarray(pixels((48, 48), 17)), icc_profile=os.urandom(300))
    (root / "line\nbreak.png").write_bytes(png(18))
    (root / "visage 顔 ø.png").write_bytes(png(19))
    latin1 = os.fsdecode(b"caf\xe9.png")  # not UTF-8: the name's bytes are kept as they are
    (root / latin1).write_bytes(png(20))
    (root / "photo.jpg").mkdir()  # a folder named like an image
    (root / "photo.jpg/inside.png").write_bytes(png(21))
    (root / "self_loop.jpg").symlink_to("self_loop.jpg")
    (root / "back_to_root").symlink_to(".", target_is_directory=True)
    (root / "nowhere.png").symlink_to("does/not/exist.png")
    os.mkfifo(root / "fifo.png")  # read naively, it would hang the build
    (root / "empty.webp").write_bytes(b"")
    (root / "notes.txt").write_text("not an image\n")
    return {
        **{f"plain/{i}.png": "accepted" for i in range(4)},
        "bomb.png": "too_large",
        "bad_crc.png": "undecodable",
        "truncated.jpg": "undecodable",
        "animated.gif": "converted",
        "deep_16bit.tif": "converted",
        "panorama.png": "accepted",
        "icc.jpg": "accepted",
        "line\nbreak.png": "accepted",
        "visage 顔 ø.png": "accepted",
        latin1: "accepted",
        "photo.jpg/inside.png": "accepted",
        "self_loop.jpg": "read_error",
        "back_to_root": "skipped",
        "nowhere.png": "read_error",
        "fifo.png": "read_error",
        "empty.webp": "empty_file",
        "notes.txt": "ignored",
    }


def hostile_archive(path: Path) -> dict[str, str]:
    """A zip or tar whose members try to leave it; returns {member: what becomes of it}."""
    escape = f"/ganforge-escape-{uuid.uuid4().hex}.png"  # would land outside, if written
    members = {
        "faces/0.png": ("accepted", png(30)),
        "faces/1.png": ("accepted", png(31)),
        "../escape.png": ("unsafe_path", png(32)),
        "faces/../../up.png": ("unsafe_path", png(33)),
        escape: ("unsafe_path", png(34)),
        "..\\windows.png": ("unsafe_path", png(35)),
        "C:/drive.png": ("unsafe_path", png(36)),
        "zeros.png": ("too_large", bytes(40 << 20)),  # 40 MB of zeros over --max-pixels 1M
    }
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, (_, data) in members.items():
                archive.writestr(name, data)
    else:
        with tarfile.open(path, "w") as archive:
            for name, (_, data) in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            link = tarfile.TarInfo("faces/link.png")
            link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
            archive.addfile(link)
        members["faces/link.png"] = ("skipped", b"")
    return {name: outcome for name, (outcome, _) in members.items()}


def hostile_prefix(prefix: S3Url) -> dict[str, str]:
    """Objects under an S3 prefix whose names try to leave it, one too large to read and one S3
    will not serve; returns {name under the prefix: what becomes of it}."""
    objects = {
        "faces/0.png": ("accepted", png(40)),
        "faces/1.png": ("accepted", png(41)),
        "../escape.png": ("unsafe_path", png(42)),
        "faces/../../up.png": ("unsafe_path", png(43)),
        "/absolute.png": ("unsafe_path", png(44)),  # the key has "//" after the prefix
        "zeros.png": ("too_large", bytes(17 << 20)),  # over the byte cap of --max-pixels 2304
        "archived.png": ("read_error", png(45)),  # in Glacier: S3 refuses to serve it
        "notes.txt": ("ignored", b"not an image\n"),
        "faces/": (None, b""),  # a console's folder marker, not a file: neither input nor ignored
    }
    for name, (_, data) in objects.items():
        cold = {"StorageClass": "GLACIER"} if name == "archived.png" else {}
        client().put_object(Bucket=prefix.bucket, Key=f"{prefix.key}/{name}", Body=data, **cold)
    return {name: outcome for name, (outcome, _) in objects.items() if outcome is not None}


def build(source: Path | str, out: Path, cwd: Path, env: dict, *extra: str) -> int:
    """`ganforge data build` of the folder source, in `cwd`; returns its peak RSS in KiB."""
    ganforge = str(Path(sys.executable).parent / "ganforge")
    result = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, ganforge, "data", "build", "--source", "folder",
         "--input", str(source), "--out", str(out), "--max-resolution", str(MAX_RESOLUTION),
         "--shard-size", "4", "--max-reject-fraction", "1", "--workers", "2", *extra],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return int(result.stdout.splitlines()[-1])


def outcomes(out: Path) -> dict[str, str]:
    """What the build made of each path: from report.json and the shards' sample records."""
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"] == report["accepted"] + report["rejected"]
    found = {r["path"]: r["reason"] for r in report["rejects"]}
    converted = {c["path"] for c in report["conversions"]}
    for shard in sorted((out / f"r{MAX_RESOLUTION:04d}").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    path = json.loads(tar.extractfile(member).read())["source_path"]
                    found[path] = "converted" if path in converted else "accepted"
    found |= {path: "ignored" for path in report["ignored_non_images"]}
    found |= {s["path"]: "skipped" for s in report["skipped"]}
    assert len(found) == report["inputs"] + len(report["ignored_non_images"]) + len(
        report["skipped"]
    )  # each once
    return found


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def outside(written: set[str], out: str) -> set[str]:
    """The paths of `written` that are neither `out` nor under it."""
    return {path for path in written if path != out and not path.startswith(f"{out}/")}


def test_hostile_folder_every_file_accounted_nothing_escapes_memory_bounded_rerun_identical(
    subprocess_env, tmp_path
):
    expected = hostile_folder(tmp_path / "in")
    (tmp_path / "cwd").mkdir()
    before = files_under(tmp_path)
    out = tmp_path / "out"
    peak_kib = build(tmp_path / "in", out, tmp_path / "cwd", subprocess_env)

    assert outcomes(out) == expected
    report = json.loads((out / "report.json").read_text())
    assert {c["path"]: c["conversions"][0] for c in report["conversions"]} == {
        "animated.gif": "first_frame",
        "deep_16bit.tif": "16bit_to_8bit",
    }
    written = files_under(tmp_path) - before
    assert "out/manifest.json" in written and not outside(written, "out")
    assert peak_kib < PEAK_RSS_BOUND_KIB, f"peak RSS {peak_kib / 1024:.0f} MiB"

    first = tree_bytes(out)
    build(tmp_path / "in", out, tmp_path / "cwd", subprocess_env)  # the same build again
    assert tree_bytes(out) == first
    assert files_under(tmp_path) - before == written


@pytest.mark.parametrize("suffix", [".zip", ".tar"])
def test_archive_members_that_leave_it_are_refused_and_nothing_is_written_outside(
    suffix, subprocess_env, tmp_path
):
    archive = tmp_path / f"hostile{suffix}"
    expected = hostile_archive(archive)
    (tmp_path / "cwd").mkdir()
    before = files_under(tmp_path)
    out = tmp_path / "deep/inside/out"
    # 1 M pixels: files over 24 MiB (8 bytes a pixel + 16 MiB) are not read
    build(archive, out, tmp_path / "cwd", subprocess_env, "--max-pixels", "1000000")

    assert outcomes(out) == expected
    written = files_under(tmp_path) - before
    assert outside(written, "deep/inside/out") == {"deep", "deep/inside"}  # its parents
    assert not any(Path(name).exists() for name in expected if name.startswith("/"))
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "up.png").exists()


def test_s3_keys_that_leave_the_prefix_or_are_too_large_or_unreadable_are_rejects(
    s3_env, subprocess_env, tmp_path
):
    """--input s3://: the objects under the prefix are checked as a folder's files are. A key
    whose name leaves the prefix is never read, an object over the byte cap is refused from the
    size S3 declares, one that cannot be read is that input's read_error; the others are built."""
    client().create_bucket(Bucket=S3_BUCKET)
    prefix = S3Url(S3_BUCKET, "raw")
    expected = hostile_prefix(prefix)
    (tmp_path / "cwd").mkdir()
    out = tmp_path / "out"
    # 48² inputs at 2,304 pixels: objects over 16 MiB + 8 bytes a pixel are not read
    build(f"{prefix}/", out, tmp_path / "cwd", subprocess_env | s3_env, "--max-pixels", "2304")

    assert outcomes(out) == expected
