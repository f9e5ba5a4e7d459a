"""The dataset build as a Prefect flow: ingest → process (parallel) → select → write → finish.

Tasks run on Prefect's thread runner; the CPU-heavy part of `process` runs in a plain spawn
process pool, because Prefect's ProcessPoolTaskRunner makes every child start its own
ephemeral API server (measured here: they lock each other's SQLite database).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import shutil
import time
from collections import Counter
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.futures import as_completed
from tqdm import tqdm

import pipelines
from pipelines.dataset.config import BuildDatasetConfig
from pipelines.dataset.process import (
    ChunkSpec,
    InputRecord,
    SpoolReader,
    load_chunk_records,
    process_chunk,
)
from pipelines.dataset.sources import Listing, list_inputs
from pipelines.dataset.validate import Reason
from trainers.data.format import (
    MANIFEST_NAME,
    REPORT_NAME,
    Counts,
    Manifest,
    ShardEntry,
    canonical_json,
    resolution_dir,
    resolutions_up_to,
    sample_key,
    shard_name,
    write_atomic,
)

CHUNK_INPUTS = 32  # inputs per process task: ~0.3-2 s of work, so task overhead stays small
WORK_DIR_NAME = ".build"  # spools of a build in progress; removed when the build completes


class BuildFailed(Exception):
    """A build that ran but must not produce a dataset (e.g. too many rejects)."""


@dataclass
class BuildResult:
    out: Path
    manifest: Manifest
    report: dict
    seconds: float


@dataclass
class Selection:
    records: list[InputRecord]  # every input in source order, duplicates now rejected
    order: list[InputRecord]  # accepted inputs in the seeded shard order


@task(retries=2, retry_delay_seconds=2, cache_policy=NONE)
def ingest(config: BuildDatasetConfig) -> Listing:
    return list_inputs(config)


@task(retries=2, retry_delay_seconds=2, cache_policy=NONE)
def process(spec: ChunkSpec, pool: Executor) -> list[InputRecord]:
    done = load_chunk_records(spec.work_dir, spec.chunk_index)
    return done if done is not None else pool.submit(process_chunk, spec).result()


@task(cache_policy=NONE)
def select(records: list[InputRecord], seed: int) -> Selection:
    """Reject exact duplicates (first in source order wins), then fix the shard order."""
    first_seen: dict[str, str] = {}
    for record in records:
        if not record.accepted:
            continue
        assert record.pixel_digest is not None
        if record.pixel_digest in first_seen:
            record.reason = Reason.duplicate.value
            record.detail = f"same pixels as {first_seen[record.pixel_digest]}"
        else:
            first_seen[record.pixel_digest] = record.path
    accepted = [r for r in records if r.accepted]
    permutation = np.random.default_rng(seed).permutation(len(accepted))
    return Selection(records, [accepted[i] for i in permutation])


class _HashingWriter:
    """File wrapper that hashes and counts the bytes tarfile streams through it."""

    def __init__(self, file):
        self.file, self.sha256, self.bytes = file, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.bytes += len(data)
        return self.file.write(data)


def _write_shard(
    out: Path, spools: SpoolReader, resolution: int, shard_index: int, samples: list[InputRecord]
) -> ShardEntry:
    path = out / shard_name(resolution, shard_index)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        hashing = _HashingWriter(f)
        # Fixed owner, mode and mtime make the tar bytes a function of the samples alone.
        with wds.TarWriter(hashing, user="", group="", mode=0o444, mtime=0, encoder=False) as tar:
            for record in samples:
                metadata = {
                    "source_id": record.index,
                    "source_path": record.path,
                    "original_size": record.original_size,
                    "conversions": record.conversions,
                }
                tar.write(
                    {
                        "__key__": sample_key(record.index),
                        "png": spools.read(record, resolution),
                        "json": canonical_json(metadata),
                    }
                )
        f.flush()
    tmp.replace(path)
    return ShardEntry(
        path=shard_name(resolution, shard_index),
        resolution=resolution,
        count=len(samples),
        bytes=hashing.bytes,
        sha256=hashing.sha256.hexdigest(),
    )


@task(retries=2, retry_delay_seconds=2, cache_policy=NONE)
def write_shards(
    out: Path, work_dir: Path, resolutions: list[int], shard_index: int, samples: list[InputRecord]
) -> list[ShardEntry]:
    """One shard index at every resolution: the same samples, in the same order."""
    with SpoolReader(work_dir) as spools:
        return [_write_shard(out, spools, r, shard_index, samples) for r in resolutions]


def build_report(config: BuildDatasetConfig, listing: Listing, records: list[InputRecord]) -> dict:
    rejects = [r for r in records if not r.accepted]
    converted = [r for r in records if r.accepted and r.conversions]
    return {
        "inputs": len(records),
        "accepted": len(records) - len(rejects),
        "rejected": len(rejects),
        "converted": len(converted),
        "reject_fraction": len(rejects) / max(len(records), 1),
        "max_reject_fraction": config.max_reject_fraction,
        "rejected_by_reason": dict(sorted(Counter(r.reason for r in rejects).items())),
        "converted_by_kind": dict(
            sorted(Counter(c for r in converted for c in r.conversions).items())
        ),
        "rejects": [{"path": r.path, "reason": r.reason, "detail": r.detail} for r in rejects],
        "conversions": [{"path": r.path, "conversions": r.conversions} for r in converted],
        "ignored_non_images": listing.ignored,
    }


def source_digest(listing: Listing, records: list[InputRecord]) -> str:
    digest = hashlib.sha256(listing.digest.encode())
    for record in records:
        digest.update(f"{record.path}\0{record.content_sha256}\n".encode())
    return digest.hexdigest()


def _prepare_work_dir(out: Path, config: BuildDatasetConfig, listing: Listing) -> Path:
    """Reuse the spools of an interrupted build of the same plan; discard any other's."""
    work_dir = out / WORK_DIR_NAME
    plan = canonical_json(
        {
            "params": config.params(),
            "input": str(config.input),
            "listing": listing.digest,
            "ganforge_version": pipelines.__version__,
            "chunk_inputs": CHUNK_INPUTS,
        }
    )
    plan_path = work_dir / "plan.json"
    if plan_path.is_file() and plan_path.read_bytes() != plan:
        shutil.rmtree(work_dir)
    write_atomic(plan_path, plan)
    return work_dir


def _remove_stale(out: Path, entries: list[ShardEntry], resolutions: list[int]) -> None:
    """Shards of an earlier build (other params) and temp files of killed ones."""
    keep = {out / e.path for e in entries}
    wanted_dirs = {resolution_dir(r) for r in resolutions}
    for child in out.iterdir():
        if child.is_dir() and child.name.startswith("r") and child.name not in wanted_dirs:
            shutil.rmtree(child)
    for directory in wanted_dirs:
        for file in (out / directory).iterdir():
            if file not in keep:
                file.unlink()


@flow(name="build-dataset", log_prints=True)
def build_dataset(config: BuildDatasetConfig, workers: int = 1) -> BuildResult:
    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    # Without a manifest the folder reads as incomplete until this build finishes.
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    listing = ingest(config)
    work_dir = _prepare_work_dir(out, config, listing)

    chunks = [
        ChunkSpec(config, i, listing.inputs[start : start + CHUNK_INPUTS], work_dir)
        for i, start in enumerate(range(0, len(listing.inputs), CHUNK_INPUTS))
    ]
    context = multiprocessing.get_context("spawn")  # no fork of a threaded process
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [process.submit(spec, pool) for spec in chunks]
        records: list[InputRecord] = []
        with tqdm(total=len(listing.inputs), unit="img", desc="process", disable=None) as bar:
            for future in as_completed(futures):
                chunk_records = future.result()
                records += chunk_records
                bar.update(len(chunk_records))
    records.sort(key=lambda r: r.index)
    selection = select(records, config.seed)
    report = build_report(config, listing, selection.records)
    write_atomic(out / REPORT_NAME, canonical_json(report))
    if report["reject_fraction"] > config.max_reject_fraction:
        by_count = sorted(report["rejected_by_reason"].items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{reason}: {count}" for reason, count in by_count[:5])
        raise BuildFailed(
            f"{report['rejected']} of {report['inputs']} inputs rejected "
            f"({report['reject_fraction']:.2%} > --max-reject-fraction "
            f"{config.max_reject_fraction:.2%}); reasons: {top}. Every reject is listed in "
            f"{out / REPORT_NAME}; processed chunks are kept in {work_dir} for the next run."
        )

    resolutions = resolutions_up_to(config.max_resolution)
    groups = [
        selection.order[start : start + config.shard_size]
        for start in range(0, len(selection.order), config.shard_size)
    ]
    shard_futures = [
        write_shards.submit(out, work_dir, resolutions, shard_index, samples)
        for shard_index, samples in enumerate(groups)
    ]
    entries: list[ShardEntry] = []
    for future in tqdm(
        as_completed(shard_futures),
        total=len(shard_futures),
        unit="shard",
        desc="write",
        disable=None,
    ):
        entries += future.result()
    entries.sort(key=lambda e: e.path)
    _remove_stale(out, entries, resolutions)
    manifest = Manifest(
        ganforge_version=pipelines.__version__,
        params=config.params(),
        source_digest=source_digest(listing, selection.records),
        counts=Counts(
            inputs=report["inputs"],
            accepted=report["accepted"],
            rejected=report["rejected"],
            converted=report["converted"],
        ),
        resolutions=resolutions,
        shards=entries,
        total_bytes=sum(e.bytes for e in entries),
    )
    write_atomic(out / MANIFEST_NAME, canonical_json(manifest.model_dump()))
    shutil.rmtree(work_dir)
    return BuildResult(out, manifest, report, time.perf_counter() - started)
