"""The dataset build as a Prefect flow: ingest → [score → choose best] → process (parallel) →
select → write (parallel) → finish (celeba without an image list scores every input first and
processes only the best num_images).

Prefect tasks run on its thread runner, in this process; each score, process and write task
hands its CPU work to the build's executor (pipelines.dataset.executor): a spawn process pool
on one machine, or Ray tasks across a Ray cluster's nodes (why not prefect-ray: see
build_dataset). Prefect's ProcessPoolTaskRunner is not used either: every child starts its
own ephemeral API server, and they lock each other's SQLite database.

Every task reads its inputs and writes its output where every node reaches them (a folder on
a shared filesystem, or S3): spools under DIR/.build/, then shards; a task run twice (a lost
node, a resumed build) writes the same bytes, so the output never depends on where tasks ran.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NONE
from prefect.futures import as_completed
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.utilities.annotations import quote
from tqdm import tqdm

import pipelines
from pipelines.dataset.config import BuildDatasetConfig, SourceKind
from pipelines.dataset.executor import BuildExecutor, ExecutorKind, TaskRun, running
from pipelines.dataset.process import (
    WORK_DIR_NAME,
    ChunkSpec,
    InputRecord,
    ScoreRecord,
    ShardSpec,
    load_chunk_records,
    load_chunk_scores,
    process_chunk,
    score_chunk,
    write_shard_group,
)
from pipelines.dataset.sources import InputRef, Listing, SourceError, list_inputs, name_bytes
from pipelines.dataset.validate import Reason
from pipelines.dataset.writer import Writer, writer_at
from trainers.data.format import (
    MANIFEST_NAME,
    MAX_RESOLUTION,
    REPORT_NAME,
    Counts,
    Manifest,
    ShardEntry,
    canonical_json,
    resolution_dir,
    resolutions_up_to,
)
from trainers.data.storage import S3Url

# Inputs per task, at most; a smaller input is still split into at least as many tasks as
# given, so that every worker has work (48 celeba crops in chunks of 32 kept one of two workers
# idle half the build), but not into more: each task costs the flow and Prefect's API ~50 ms
# of CPU.
CHUNK_INPUTS, MIN_CHUNKS = 32, 16  # process: ~0.3-2 s of work per task at 32
SCORE_CHUNK_INPUTS, MIN_SCORE_CHUNKS = 256, 4  # celeba's score pass: a few ms per input
PLAN_NAME = "plan.json"  # under WORK_DIR_NAME: what the spools there were made for


class BuildFailed(Exception):
    """A build that ran but must not produce a dataset (e.g. too many rejects)."""


@dataclass
class BuildResult:
    out: Path | S3Url
    manifest: Manifest
    report: dict
    seconds: float
    runs: list[TaskRun] = field(default_factory=list)  # every executor call, in finishing order

    @property
    def nodes(self) -> Counter[str]:
        """Executor calls per node that ran them."""
        return Counter(run.node for run in self.runs)


@dataclass
class Selection:
    records: list[InputRecord]  # every input in source order, duplicates now rejected
    order: list[InputRecord]  # accepted inputs in the seeded shard order


def _transient(task, task_run, state) -> bool:
    """Retry what may pass on a second try (a read of a network filesystem), not an unusable
    source (no images in --input): that is the user's to fix, at once."""
    return not isinstance(state.result(raise_on_failure=False), SourceError)


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, cache_policy=NONE)
def ingest(config: BuildDatasetConfig) -> Listing:
    return list_inputs(config)


@task(retries=2, retry_delay_seconds=2, cache_policy=NONE)
def process(spec: ChunkSpec, pool: BuildExecutor) -> list[InputRecord]:
    done = load_chunk_records(spec.out, spec.chunk_index)
    return done if done is not None else pool.submit(process_chunk, spec).result()


@task(retries=2, retry_delay_seconds=2, cache_policy=NONE)
def score(spec: ChunkSpec, pool: BuildExecutor) -> list[ScoreRecord]:
    done = load_chunk_scores(spec.out, spec.chunk_index)
    return done if done is not None else pool.submit(score_chunk, spec).result()


@task(cache_policy=NONE)
def choose_best(
    inputs: list[InputRef], scores: list[ScoreRecord], count: int
) -> tuple[list[InputRef], list[InputRecord]]:
    """celeba: the `count` usable inputs of highest quality score (ties: source order), in
    source order; and a reject record for each input that could not be scored."""
    usable = sorted((s for s in scores if s.reason is None), key=lambda s: (-s.score, s.index))
    kept = {s.index for s in usable[:count]}
    rejects = [
        InputRecord(s.index, s.path, s.reason, s.detail, content_sha256=s.content_sha256)
        for s in scores
        if s.reason is not None
    ]
    return [ref for ref in inputs if ref.index in kept], rejects


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


@task(retries=2, retry_delay_seconds=2, cache_policy=NONE)
def write_shards(spec: ShardSpec, pool: BuildExecutor) -> list[ShardEntry]:
    return pool.submit(write_shard_group, spec).result()


def build_report(
    config: BuildDatasetConfig, listing: Listing, records: list[InputRecord], not_selected: int
) -> dict:
    """inputs = accepted + rejected + not_selected; every reject with its reason."""
    rejects = [r for r in records if not r.accepted]
    converted = [r for r in records if r.accepted and r.conversions]
    inputs = len(records) + not_selected
    report = {
        "inputs": inputs,
        "accepted": len(records) - len(rejects),
        "rejected": len(rejects),
        "converted": len(converted),
        "not_selected": not_selected,
        "reject_fraction": len(rejects) / max(inputs, 1),
        "max_reject_fraction": config.max_reject_fraction,
        "rejected_by_reason": dict(sorted(Counter(r.reason for r in rejects).items())),
        "converted_by_kind": dict(
            sorted(Counter(c for r in converted for c in r.conversions).items())
        ),
        "rejects": [{"path": r.path, "reason": r.reason, "detail": r.detail} for r in rejects],
        "conversions": [{"path": r.path, "conversions": r.conversions} for r in converted],
        "ignored_non_images": listing.ignored,
    }
    if config.source is not SourceKind.synthetic:
        report["skipped"] = listing.skipped  # links to folders, tar links: not inputs
    if config.source is SourceKind.celeba:
        report["selected_by"] = "quality_score" if listing.scored else "image_list"
        report["unlisted_images"] = listing.unlisted  # in --input, not in the landmark file
    return report


def source_digest(listing: Listing, records: list[InputRecord | ScoreRecord]) -> str:
    """Over the listing and every input read (path and content sha256)."""
    digest = hashlib.sha256(listing.digest.encode())
    for record in sorted(records, key=lambda r: r.index):
        digest.update(name_bytes(f"{record.path}\0{record.content_sha256}\n"))
    return digest.hexdigest()


def _prepare_work_dir(out: Writer, config: BuildDatasetConfig, listing: Listing) -> None:
    """Reuse the spools of an interrupted build of the same plan; discard any other's."""
    plan = canonical_json(
        {
            "params": config.params(),
            "input": str(config.input),
            "listing": listing.digest,
            "ganforge_version": pipelines.__version__,
            "chunk_inputs": [CHUNK_INPUTS, MIN_CHUNKS, SCORE_CHUNK_INPUTS, MIN_SCORE_CHUNKS],
        }
    )
    plan_name = f"{WORK_DIR_NAME}/{PLAN_NAME}"
    try:
        if out.read(plan_name) != plan:
            out.delete_folder(WORK_DIR_NAME)
    except FileNotFoundError:
        pass
    out.write(plan_name, plan)


def _remove_stale(out: Writer, entries: list[ShardEntry], resolutions: list[int]) -> None:
    """Shards of an earlier build (other params) and temp files of killed ones."""
    keep = {e.path for e in entries}
    wanted = [resolution_dir(r) for r in resolutions]
    for folder in {resolution_dir(r) for r in resolutions_up_to(MAX_RESOLUTION)} - set(wanted):
        out.delete_folder(folder)
    out.delete(sorted(set(out.files(wanted)) - keep))


def _absolute(config: BuildDatasetConfig) -> BuildDatasetConfig:
    """Local paths made absolute: the workers, Ray's on any node, run in other directories."""
    paths = ("input", "landmarks", "image_list", "out")
    return config.model_copy(
        update={
            name: getattr(config, name).absolute()
            for name in paths
            if isinstance(getattr(config, name), Path)
        }
    )


def chunk_size(count: int, largest: int, fewest: int) -> int:
    """Inputs per task: `largest`, or fewer so that `count` inputs make `fewest` tasks. It
    depends on the count only, so that a resumed build finds its spools whatever its workers."""
    return max(1, min(largest, math.ceil(count / fewest)))


@contextmanager
def local_run_settings() -> Iterator[None]:
    """For a flow run from a terminal or `dvc repro` rather than a deployment: no flow-run
    heartbeats (unless set in the environment). They detect crashed deployment runs, and the
    heartbeat thread stops on a 1 s tick: 0-1 s more on every run, ~15% of a 5 s build."""
    names = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")
    if any(name in os.environ for name in names):
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _chunks(
    config: BuildDatasetConfig, inputs: list[InputRef], size: int, out: Writer
) -> list[ChunkSpec]:
    return [
        ChunkSpec(config, i, inputs[start : start + size], out)
        for i, start in enumerate(range(0, len(inputs), size))
    ]


def _run_chunks(step, chunks: list[ChunkSpec], pool: BuildExecutor, desc: str) -> list:
    """A chunk task over every chunk, with a progress bar; the records in input order."""
    futures = [step.submit(quote(spec), pool) for spec in chunks]
    records: list = []
    with tqdm(total=sum(len(c.inputs) for c in chunks), unit="img", desc=desc, disable=None) as bar:
        for future in as_completed(futures):
            chunk_records = future.result()
            records += chunk_records
            bar.update(len(chunk_records))
    return sorted(records, key=lambda r: r.index)


def _usable_inputs(
    config: BuildDatasetConfig, listing: Listing, out: Writer, pool: BuildExecutor
) -> tuple[list[InputRef], list[InputRecord], list[ScoreRecord]]:
    """The inputs to process; reject records of the others (missing, or failed at scoring); and
    the scores (celeba without image_list: every present input is scored first, in chunks that
    a resumed build does not redo, then the best num_images are kept)."""
    rejects = [
        InputRecord(r.index, r.path, Reason.missing.value, f"{r.path} is not in --input")
        for r in listing.missing
    ]
    if not listing.scored:
        return listing.inputs, rejects, []
    size = chunk_size(len(listing.inputs), SCORE_CHUNK_INPUTS, MIN_SCORE_CHUNKS)
    chunks = _chunks(config, listing.inputs, size, out)
    scores = _run_chunks(score, chunks, pool, "score")
    assert config.num_images is not None
    kept, unscored = choose_best(quote(listing.inputs), quote(scores), config.num_images)
    return kept, rejects + unscored, scores


def _write_all(
    out: Writer,
    resolutions: list[int],
    order: list[InputRecord],
    shard_size: int,
    pool: BuildExecutor,
) -> list[ShardEntry]:
    """Shard i holds samples [i*shard_size, (i+1)*shard_size) of the order at every resolution."""
    # quote(): Prefect would walk every record of every argument looking for futures.
    futures = [
        write_shards.submit(
            quote(ShardSpec(out, resolutions, i, order[start : start + shard_size])), pool
        )
        for i, start in enumerate(range(0, len(order), shard_size))
    ]
    entries: list[ShardEntry] = []
    for future in tqdm(
        as_completed(futures), total=len(futures), unit="shard", desc="write", disable=None
    ):
        entries += future.result()
    return sorted(entries, key=lambda e: e.path)


@flow(name="build-dataset", log_prints=True)
def build_dataset(
    config: BuildDatasetConfig, workers: int = 1, executor: ExecutorKind = ExecutorKind.local
) -> BuildResult:
    """Builds config.out; the score, process and write work runs on `executor`: a local pool of
    `workers` processes, or Ray tasks on the cluster's nodes (its CPUs decide how many at once).

    Ray tasks behind this seam, not prefect-ray's RayTaskRunner: task states stay with this
    process's Prefect API (other nodes may not reach it), workers never import Prefect, and
    Ray itself reruns a lost node's tasks."""
    started = time.perf_counter()
    config = _absolute(config)
    out = writer_at(config.out)
    out.prepare()
    # Without a manifest the dataset reads as incomplete until this build finishes.
    out.delete([MANIFEST_NAME])
    # The executor (its workers' start) may have been started ahead, while the API started.
    with running(executor, workers) as pool:
        listing = ingest(config)
        _prepare_work_dir(out, config, listing)
        # the local paths the workers read and write: the input, and the spools' folder (the
        # plan just written there shows that a node sees this folder, not one of its own)
        plan = config.out / WORK_DIR_NAME / PLAN_NAME if isinstance(config.out, Path) else None
        pool.check_shared([path for path in (config.input, plan) if isinstance(path, Path)])
        inputs, rejects, scores = _usable_inputs(config, listing, out, pool)
        chunks = _chunks(config, inputs, chunk_size(len(inputs), CHUNK_INPUTS, MIN_CHUNKS), out)
        records = _run_chunks(process, chunks, pool, "process")
        records = sorted(records + rejects, key=lambda r: r.index)
        selection = select(quote(records), config.seed)
        not_selected = sum(s.reason is None for s in scores) - len(inputs) if scores else 0
        report = build_report(config, listing, selection.records, not_selected)
        out.write(REPORT_NAME, canonical_json(report))
        if report["reject_fraction"] > config.max_reject_fraction:
            by_count = sorted(report["rejected_by_reason"].items(), key=lambda kv: -kv[1])
            top = ", ".join(f"{reason}: {count}" for reason, count in by_count[:5])
            raise BuildFailed(
                f"{report['rejected']} of {report['inputs']} inputs rejected "
                f"({report['reject_fraction']:.2%} > --max-reject-fraction "
                f"{config.max_reject_fraction:.2%}); reasons: {top}. Every reject is listed in "
                f"{out.url(REPORT_NAME)}; processed chunks are kept in {out.url(WORK_DIR_NAME)} "
                "for the next run."
            )
        resolutions = resolutions_up_to(config.max_resolution)
        entries = _write_all(out, resolutions, selection.order, config.shard_size, pool)
        runs = list(pool.runs)
    _remove_stale(out, entries, resolutions)
    manifest = Manifest(
        ganforge_version=pipelines.__version__,
        params=config.params(),
        source_digest=source_digest(listing, scores or selection.records),
        counts=Counts(
            inputs=report["inputs"],
            accepted=report["accepted"],
            rejected=report["rejected"],
            converted=report["converted"],
            not_selected=report["not_selected"],
        ),
        resolutions=resolutions,
        shards=entries,
        total_bytes=sum(e.bytes for e in entries),
    )
    out.write(MANIFEST_NAME, canonical_json(manifest.model_dump()))
    out.delete_folder(WORK_DIR_NAME)
    return BuildResult(config.out, manifest, report, time.perf_counter() - started, runs)
