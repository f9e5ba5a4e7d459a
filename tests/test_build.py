"""The build flow end to end: accounting, determinism, atomicity and resume, verify."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from pipelines.dataset.flow import WORK_DIR_NAME, BuildFailed
from tests.conftest import build, ganforge, kill_build_when, tree_bytes
from tests.images import pixels, save
from trainers.data.format import resolutions_up_to, sample_key
from trainers.data.storage import load_manifest, verify_dataset
from trainers.files import atomic_file, write_atomic


def make_messy_folder(root: Path) -> dict[str, str]:
    """A folder with good, converted and bad inputs; returns {path: expected reason}."""
    for i in range(12):
        save(root / f"good/{i:02d}.jpg", Image.fromarray(pixels((48 + i, 40), i)), quality=92)
    save(root / "modes/gray.png", Image.fromarray(pixels((40, 40), 20)).convert("L"))
    save(root / "modes/rgba.png", Image.fromarray(pixels((40, 40), 21)).convert("RGBA"))
    save(root / "modes/cmyk.jpg", Image.fromarray(pixels((40, 40), 22)).convert("CMYK"))
    shutil.copy(root / "good/03.jpg", root / "z_copy_of_03.jpg")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image at all\n")
    raw = (root / "good/05.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(raw[: len(raw) // 3])
    save(root / "tiny.png", Image.fromarray(pixels((16, 16), 30)))
    (root / "README.txt").write_text("ignored: not an image extension")
    return {
        "z_copy_of_03.jpg": "duplicate",
        "empty.png": "empty_file",
        "notes.jpg": "not_an_image",
        "truncated.jpg": "undecodable",
        "tiny.png": "too_small",
    }


def test_every_input_is_accounted_for(prefect_api, tmp_path):
    expected = make_messy_folder(tmp_path / "in")
    result = build(
        tmp_path / "out",
        source="folder",
        input=tmp_path / "in",
        num_images=None,
        max_resolution=32,
        shard_size=4,
        max_reject_fraction=0.5,
    )
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["inputs"] == 20 == report["accepted"] + report["rejected"]
    assert {r["path"]: r["reason"] for r in report["rejects"]} == expected
    assert report["converted_by_kind"] == {"alpha_composited": 1, "cmyk": 1, "grayscale": 1}
    assert report["ignored_non_images"] == ["README.txt"]
    duplicate = next(r for r in report["rejects"] if r["reason"] == "duplicate")
    assert duplicate["detail"] == "same pixels as good/03.jpg"
    manifest = result.manifest
    assert manifest.counts.accepted == 15
    for resolution in resolutions_up_to(32):
        assert sum(s.count for s in manifest.shards_at(resolution)) == 15
    assert not (tmp_path / "out" / WORK_DIR_NAME).exists()


def test_reject_fraction_above_limit_fails_after_writing_report(prefect_api, tmp_path):
    make_messy_folder(tmp_path / "in")
    with pytest.raises(BuildFailed, match=r"5 of 20 inputs rejected \(25.00% > .*1.00%\)"):
        build(
            tmp_path / "out",
            source="folder",
            input=tmp_path / "in",
            num_images=None,
            max_resolution=32,
        )
    assert json.loads((tmp_path / "out/report.json").read_text())["rejected"] == 5
    assert not (tmp_path / "out/manifest.json").exists()


def test_zip_and_tar_sources_equal_the_folder(prefect_api, tmp_path):
    folder = tmp_path / "in"
    for i in range(6):
        save(folder / f"sub/{i}.png", Image.fromarray(pixels((40, 36), i)))
    with zipfile.ZipFile(tmp_path / "in.zip", "w") as archive:
        for path in sorted(folder.rglob("*.png")):
            archive.write(path, path.relative_to(folder).as_posix())
    with tarfile.open(tmp_path / "in.tar", "w") as archive:
        archive.add(folder / "sub", arcname="sub")
    builds = []
    for source in ("in", "in.zip", "in.tar"):
        out = tmp_path / f"out-{source}"
        build(
            out,
            source="folder",
            input=tmp_path / source,
            num_images=None,
            max_resolution=32,
            shard_size=4,
        )
        builds.append({k: v for k, v in tree_bytes(out).items() if k.endswith(".tar")})
    assert builds[0] == builds[1] == builds[2]


def test_shards_hold_the_same_keys_at_every_resolution(small_dataset):
    manifest = load_manifest(small_dataset)
    keys_by_resolution = {}
    for resolution in manifest.resolutions:
        keys = []
        for shard in manifest.shards_at(resolution):
            with tarfile.open(small_dataset / shard.path) as archive:
                members = archive.getmembers()
                assert all(m.mtime == 0 and m.uname == "" for m in members)
                keys += [m.name.split(".")[0] for m in members if m.name.endswith(".png")]
                image = Image.open(archive.extractfile(members[1]))
                assert image.size == (resolution, resolution) and image.mode == "RGB"
        keys_by_resolution[resolution] = keys
    assert len({tuple(k) for k in keys_by_resolution.values()}) == 1
    assert sorted(keys_by_resolution[4]) == [sample_key(i) for i in range(40)]
    assert keys_by_resolution[4] != sorted(keys_by_resolution[4])  # seeded shuffle


def test_two_builds_are_byte_identical_whatever_the_workers(prefect_api, small_dataset, tmp_path):
    again = tmp_path / "again"
    build(again, num_images=40, max_resolution=32, shard_size=16, seed=3, workers=1)
    assert tree_bytes(again) == tree_bytes(small_dataset)


def test_verify_names_corrupted_missing_and_extra_shards(small_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    assert verify_dataset(copy).ok
    flipped = copy / "r0016/shard-000001.tar"
    data = bytearray(flipped.read_bytes())
    data[700] ^= 0x01
    flipped.write_bytes(bytes(data))
    (copy / "r0008/shard-000002.tar").unlink()
    (copy / "r0032/shard-000099.tar").write_bytes(b"stray")
    result = verify_dataset(copy)
    assert result.corrupted == ["r0016/shard-000001.tar"]
    assert result.missing == ["r0008/shard-000002.tar"]
    assert result.extra == ["r0032/shard-000099.tar"]
    cli = ganforge("data", "verify", str(copy))
    assert cli.returncode == 1
    for name in (
        "corrupted: r0016/shard-000001.tar",
        "missing: r0008/shard-000002.tar",
        "extra: r0032/shard-000099.tar",
    ):
        assert name in cli.stderr


def test_sigkill_midway_then_rerun_gives_identical_output(subprocess_env, tmp_path):
    args = [
        "data",
        "build",
        "--num-images",
        "256",
        "--max-resolution",
        "64",
        "--shard-size",
        "32",
        "--seed",
        "5",
        "--workers",
        "2",
    ]
    reference = tmp_path / "reference"
    assert ganforge(*args, "--out", str(reference), env=subprocess_env).returncode == 0

    killed = tmp_path / "killed"
    kill_build_when(args, killed, "chunk-*.json", subprocess_env)
    for shard in killed.glob("r*/*.tar"):  # any complete-named shard is a complete one
        assert shard.read_bytes() == (reference / shard.relative_to(killed)).read_bytes()

    rerun = ganforge(*args, "--out", str(killed), env=subprocess_env)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_bytes(killed) == tree_bytes(reference)


def test_rebuild_with_other_params_leaves_no_stale_shards(prefect_api, tmp_path):
    out = tmp_path / "out"
    build(out, num_images=20, max_resolution=16, shard_size=5)
    build(out, num_images=10, max_resolution=8, shard_size=5)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.tar")) == [
        "r0004/shard-000000.tar",
        "r0004/shard-000001.tar",
        "r0008/shard-000000.tar",
        "r0008/shard-000001.tar",
    ]
    assert verify_dataset(out).ok
    assert load_manifest(out).counts.accepted == 10


def test_local_runs_skip_flow_heartbeats_unless_the_user_sets_them(monkeypatch):
    from prefect.settings import get_current_settings

    from pipelines.dataset.flow import local_run_settings

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    monkeypatch.delenv("PREFECT_RUNNER_HEARTBEAT_FREQUENCY", raising=False)
    with local_run_settings():
        assert get_current_settings().flows.heartbeat_frequency is None
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    with local_run_settings():
        assert get_current_settings().flows.heartbeat_frequency is not None


@pytest.fixture
def umask(request):
    """The process's umask set to the test's parameter (build workers inherit it), restored."""
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_dataset_and_statistics_files_are_readable_by_others_under_umask_022(
    prefect_api, tmp_path, umask
):
    """Other users and containers on a shared filesystem read what a build writes."""
    from trainers.metrics.cache import statistics_dir
    from trainers.metrics.evaluation import Evaluation
    from trainers.metrics.registry import get_metric

    out = tmp_path / "out"
    build(out, num_images=8, max_resolution=16, shard_size=8)
    get_metric("swd1k").prepare(Evaluation(None, out, real_resolution=16, chunk_size=8))
    statistics = list(statistics_dir(out).rglob("*.npy"))
    written = [out / "manifest.json", out / "report.json", *out.rglob("*.tar"), *statistics]
    assert statistics and len(written) == 6
    modes = {path.relative_to(tmp_path).as_posix(): path.stat().st_mode & 0o777 for path in written}
    assert modes == dict.fromkeys(modes, 0o644)


@pytest.mark.parametrize("umask", [0o027], indirect=True)
def test_an_atomic_write_takes_the_umask_and_a_failed_one_leaves_the_old_file(tmp_path, umask):
    path = tmp_path / "file.json"
    write_atomic(path, b"old")
    assert path.stat().st_mode & 0o777 == 0o640
    with pytest.raises(RuntimeError), atomic_file(path) as file:
        file.write(b"new, half written")
        raise RuntimeError("killed midway")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]
