"""Mistakes a user makes on the command line, as one table: tests/test_cli_mistakes.py checks
each (exit status, one line naming the input, no traceback) and `make bench`
(benchmarks/usage_errors.py) reports the median time of a command's usage errors.

Each mistake runs in a scene folder (`make_scene`) as the working directory, with no MLflow,
Prefect or Ray service configured; `{scene}` and `{repo}` in its arguments are those folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.images import pixel_bomb
from trainers.run_storage import CONFIG_NAME, PROGRESS_NAME

REPO = Path(__file__).resolve().parent.parent
UNREACHABLE_PREFECT = "http://127.0.0.1:9/api"  # the discard port: connection refused


@dataclass(frozen=True)
class Mistake:
    name: str
    args: tuple[str, ...]  # after `ganforge`; {scene} and {repo} are filled in
    status: int  # 2: the user's to fix; 1: a failure at run time
    says: str  # in the one line printed
    env: dict[str, str] = field(default_factory=dict)
    not_as_root: bool = False  # root may write anywhere: the mistake needs another user

    @property
    def command(self) -> str:
        """The command it is made with, e.g. "data build" (what `make bench` groups by)."""
        words = [a for a in self.args if not a.startswith("-")]
        return " ".join(words[:2] if words[0] in ("data", "pipeline") else words[:1])

    def argv(self, scene: Path) -> list[str]:
        return [a.format(scene=scene, repo=REPO) for a in self.args]


@dataclass(frozen=True)
class Outcome:
    status: int
    lines: list[str]  # the non-empty lines of stdout and stderr together
    seconds: float  # wall time, interpreter start included


def make_scene(scene: Path) -> None:
    """The files the mistakes point at."""
    (scene / "a-file").write_text("not a folder\n")
    (scene / "bad.yaml").write_text("model: [unclosed\n")
    (scene / "pipeline.yaml").write_text("trainings: [configs/train/began.yaml\n")
    (scene / "params.yaml").write_text("build_dataset:\n  source: synthetic\n  shard_sise: 10\n")
    (scene / "images").mkdir()
    (scene / "images" / "bomb.png").write_bytes(pixel_bomb())
    (scene / "texts").mkdir()
    (scene / "texts" / "README.txt").write_text("no image here\n")
    (scene / "not-a-checkpoint").mkdir()
    (scene / "checkpoint").mkdir()  # looks like one: a command checks its other options next
    for name in (CONFIG_NAME, PROGRESS_NAME):
        (scene / "checkpoint" / name).write_text("{}\n")
    (scene / "grid.png").mkdir()
    (scene / "damaged").mkdir()
    (scene / "damaged" / "manifest.json").write_text("{not json\n")
    (scene / "locked").mkdir()
    (scene / "locked").chmod(0o555)
    (scene / "small").mkdir()
    (scene / "small" / "manifest.json").write_text(SMALL_MANIFEST)  # and no shards
    (scene / "stats.yaml").write_text(
        "real_statistics:\n  data: small\n  resolutions: [8]\n  metrics: [swd1k]\n"
    )


# A dataset of 8 synthetic faces up to 8² (its manifest is all a training checks first).
SMALL_MANIFEST = """{
 "counts": {"accepted": 8, "converted": 0, "inputs": 8, "not_selected": 0, "rejected": 0},
 "ganforge_version": "0.1.0",
 "params": {"max_reject_fraction": 0.01, "max_resolution": 8, "num_images": 8,
  "png_compress_level": 6, "seed": 0, "shard_size": 8, "source": "synthetic"},
 "resolutions": [4, 8],
 "shards": [{"bytes": 10240, "count": 8, "path": "r0004/shard-000000.tar", "resolution": 4,
  "sha256": "0000000000000000000000000000000000000000000000000000000000000000"},
  {"bytes": 10240, "count": 8, "path": "r0008/shard-000000.tar", "resolution": 8,
  "sha256": "0000000000000000000000000000000000000000000000000000000000000000"}],
 "source_digest": "0", "total_bytes": 20480
}
"""

BEGAN = "{repo}/configs/train/began.yaml"
MISTAKES = [
    # data build
    Mistake("build input missing", ("data", "build", "--source", "folder", "--input",
            "{scene}/nope", "--out", "{scene}/out"), 2, "--input {scene}/nope does not exist"),
    Mistake("build input without images", ("data", "build", "--source", "folder", "--input",
            "{scene}/texts", "--out", "{scene}/out"), 2, "no images in {scene}/texts"),
    Mistake("build out inside input", ("data", "build", "--source", "folder", "--input",
            "{scene}/images", "--out", "{scene}/images/ds"), 2, "is inside --input"),
    # s3:// locations: refused from their text alone, with no request to S3
    Mistake("build s3 out inside s3 input", ("data", "build", "--source", "folder", "--input",
            "s3://ganforge-raw/faces/", "--out", "s3://ganforge-raw/faces/ds"), 2,
            "--out s3://ganforge-raw/faces/ds is inside --input s3://ganforge-raw/faces"),
    Mistake("build bad server keep seconds", ("data", "build", "--out", "{scene}/kept"), 2,
            "GANFORGE_PREFECT_SERVER_KEEP_SECONDS='soon': expected a number of seconds",
            env={"GANFORGE_PREFECT_SERVER_KEEP_SECONDS": "soon"}),
    Mistake("build s3 out bad bucket name", ("data", "build", "--out", "s3://Raw_Faces/ds"), 2,
            "'Raw_Faces' is not an S3 bucket name"),
    Mistake("build out is a file", ("data", "build", "--out", "{scene}/a-file"), 2,
            "--out {scene}/a-file: is a file; give a folder"),
    Mistake("build out under a file", ("data", "build", "--out", "{scene}/a-file/ds"), 2,
            "{scene}/a-file is a file, not a folder"),
    Mistake("build out not writable", ("data", "build", "--out", "{scene}/locked/ds"), 2,
            "cannot write in {scene}/locked", not_as_root=True),
    Mistake("build bad option value", ("data", "build", "--max-resolution", "48"), 2,
            "--max-resolution: must be a power of two"),
    Mistake("build resolution too high", ("data", "build", "--max-resolution", "2048"), 2,
            "--max-resolution: must be a power of two from 4 to 1024, got 2048"),
    Mistake("build zero images", ("data", "build", "--num-images", "0"), 2, "--num-images"),
    Mistake("build images not a number", ("data", "build", "--num-images", "ten"), 2,
            "Invalid value for '--num-images'"),
    Mistake("build zero shard size", ("data", "build", "--shard-size", "0"), 2,
            "--shard-size: Input should be greater than or equal to 1"),
    Mistake("build reject fraction over 1", ("data", "build", "--max-reject-fraction", "1.5"),
            2, "--max-reject-fraction: Input should be less than or equal to 1"),
    Mistake("build folder without input", ("data", "build", "--source", "folder"), 2,
            "source 'folder' needs --input PATH"),
    Mistake("build unknown source", ("data", "build", "--source", "celebahq"), 2,
            "'celebahq' is not one of 'synthetic', 'folder'"),
    Mistake("build zero max pixels", ("data", "build", "--max-pixels", "0"), 2,
            "--max-pixels"),
    Mistake("build params unknown key", ("data", "build", "--params", "{scene}/params.yaml"),
            2, "unknown key; allowed: source, input"),
    Mistake("build params bad yaml", ("data", "build", "--params", "{scene}/bad.yaml"), 2,
            "--params {scene}/bad.yaml: invalid YAML at line 2"),
    Mistake("build unknown option", ("data", "build", "--frobnicate"), 2,
            "No such option: --frobnicate"),
    # data verify, data stats
    Mistake("verify a file", ("data", "verify", "{scene}/a-file"), 2,
            "{scene}/a-file is a file; give the dataset folder"),
    Mistake("verify no dataset", ("data", "verify", "{scene}/images"), 2,
            "no dataset at {scene}/images: manifest.json is missing (build one with `ganforge "
            "data build"),
    Mistake("verify damaged manifest", ("data", "verify", "{scene}/damaged"), 1,
            "corrupted: {scene}/damaged/manifest.json"),
    # a runtime failure no command expected: one line, exit 1
    Mistake("stats shards missing", ("data", "stats", "--params", "{scene}/stats.yaml"), 1,
            "FileNotFoundError: [Errno 2] No such file or directory: 'small/r0008/shard-000000.tar'"
            " (the traceback: ganforge --debug ...)"),
    Mistake("stats params bad yaml", ("data", "stats", "--params", "{scene}/bad.yaml"), 2,
            "invalid YAML"),
    # train
    Mistake("train bad yaml", ("train", "{scene}/bad.yaml"), 2,
            "{scene}/bad.yaml: invalid YAML at line 2, column 1"),
    Mistake("train bad yaml in --set", ("train", BEGAN, "--set", "total_kimg=[1"), 2,
            "--set 'total_kimg=[1': invalid YAML"),
    Mistake("train missing config", ("train", "{scene}/nope.yaml"), 2,
            "{scene}/nope.yaml: No such file or directory"),
    Mistake("train negative max-kimg", ("train", BEGAN, "--max-kimg", "-1"), 2,
            "--max-kimg -1: must be > 0"),
    Mistake("train zero max-kimg", ("train", BEGAN, "--max-kimg", "0"), 2, "must be > 0"),
    Mistake("train zero workers", ("train", BEGAN, "--workers", "0"), 2, "--workers"),
    Mistake("train unknown key", ("train", BEGAN, "--set", "totl_kimg=3"), 2,
            "totl_kimg: unknown key; allowed: model, data"),
    Mistake("train storage under a file", ("train", BEGAN, "--storage", "{scene}/a-file/runs"),
            2, "--storage {scene}/a-file/runs"),
    Mistake("train dataset too small", ("train", BEGAN, "--data", "{scene}/small"), 2,
            "--source synthetic --max-reject-fraction 0.01 --max-resolution 32 "
            "--num-images 8 --png-compress-level 6 --seed 0 --shard-size 8 --out {scene}/small"),
    # evaluate, sample
    Mistake("evaluate missing checkpoint", ("evaluate", "--checkpoint", "{scene}/nope"), 2,
            "--checkpoint {scene}/nope does not exist"),
    Mistake("evaluate not a checkpoint", ("evaluate", "--checkpoint",
            "{scene}/not-a-checkpoint"), 2,
            "is not a ganforge checkpoint (no config.json or progress.json)"),
    Mistake("evaluate out under a file", ("evaluate", "--checkpoint", "{scene}/checkpoint",
            "--out", "{scene}/a-file/m.json"), 2, "{scene}/a-file is a file, not a folder"),
    Mistake("evaluate damaged checkpoint", ("evaluate", "--checkpoint", "{scene}/checkpoint"), 1,
            "--checkpoint {scene}/checkpoint is damaged: ValidationError: "),
    Mistake("evaluate model not a uri", ("evaluate", "--model", "nope"), 2,
            "--model nope: not a model URI"),
    Mistake("evaluate no dataset", ("evaluate", "--checkpoint", "{scene}/checkpoint", "--data",
            "{scene}/images"), 2, "--data no dataset at {scene}/images"),
    Mistake("evaluate no store", ("evaluate", "--model", "models:/m@champion"), 2,
            "no MLflow store at {scene}/mlflow.db"),
    Mistake("evaluate bad metric", ("evaluate", "--model", "models:/m/1", "--metrics",
            "fid"), 2, "--metrics"),
    Mistake("sample out not an image name", ("sample", "--checkpoint", "{scene}/nope",
            "--out", "{scene}/grid.txt"), 2, "--out {scene}/grid.txt: not an image file name"),
    Mistake("sample out under a file", ("sample", "--checkpoint", "{scene}/nope", "--out",
            "{scene}/a-file/grid.png"), 2, "{scene}/a-file is a file, not a folder"),
    Mistake("sample out is a folder", ("sample", "--checkpoint", "{scene}/nope", "--out",
            "{scene}/grid.png"), 2, "--out {scene}/grid.png: is a folder; give a file name"),
    Mistake("sample model not a uri", ("sample", "--model", "nope", "--out", "g.png"), 2,
            "--model nope: not a model URI; give models:/NAME@ALIAS"),
    Mistake("sample no store", ("sample", "--model", "models:/m@champion", "--out", "g.png"),
            2, "no MLflow store at {scene}/mlflow.db"),
    Mistake("sample zero images", ("sample", "--checkpoint", "{scene}/nope", "--num", "0",
            "--out", "g.png"), 2, "--num"),
    Mistake("sample both sources", ("sample", "--checkpoint", "{scene}/nope", "--model",
            "models:/m/1", "--out", "g.png"), 2, "exactly one of --checkpoint"),
    # promote
    Mistake("promote no store", ("promote", "m", "--version", "1"), 2,
            "no MLflow store at {scene}/mlflow.db"),
    Mistake("promote bad version", ("promote", "m", "--version", "latest"), 2,
            "--version latest: give a version number"),
    # report
    Mistake("report not a run id", ("report", "nope"), 2, "RUN_ID nope: not an MLflow run id"),
    Mistake("report no store", ("report", "0" * 32), 2, "no MLflow store at {scene}/mlflow.db"),
    Mistake("report out is a folder", ("report", "0" * 32, "--out", "{scene}/images"), 2,
            "--out {scene}/images: is a folder"),
    # pipeline
    Mistake("pipeline run bad yaml", ("pipeline", "run", "{scene}/pipeline.yaml"), 2,
            "{scene}/pipeline.yaml: invalid YAML at line 2"),
    Mistake("pipeline run missing preset", ("pipeline", "run", "{repo}/configs/pipeline/"
            "quickstart.yaml"), 2, "configs/train/wgan_gp.yaml: No such file or directory"),
    Mistake("pipeline deploy without server", ("pipeline", "deploy"), 2,
            "PREFECT_API_URL is not set"),
    # the presets resolve under --source, whatever the working directory
    Mistake("pipeline deploy unreachable", ("pipeline", "deploy", "--source", "{repo}"), 1,
            f"the Prefect server at {UNREACHABLE_PREFECT} failed: ConnectError",
            env={"PREFECT_API_URL": UNREACHABLE_PREFECT}),
]  # fmt: skip


def run(mistake: Mistake, scene: Path) -> Outcome:
    """`ganforge <mistake>` as a user runs it, in the scene, with no services configured."""
    unset = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "RAY_ADDRESS", "GANFORGE_DEBUG")
    env = {k: v for k, v in os.environ.items() if k not in unset} | mistake.env
    started = time.perf_counter()
    result = subprocess.run(
        [str(Path(sys.executable).parent / "ganforge"), *mistake.argv(scene)],
        capture_output=True,
        text=True,
        env=env,
        cwd=scene,
        timeout=120,
    )
    seconds = time.perf_counter() - started
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return Outcome(result.returncode, lines, seconds)


def applies(mistake: Mistake) -> bool:
    return not (mistake.not_as_root and os.geteuid() == 0)
