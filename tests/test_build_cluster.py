"""`ganforge data build` on the suite's 2-node Ray cluster (RAY_ADDRESS set: the score, process
and write tasks are Ray tasks), with inputs and outputs on S3 (moto in server mode, which the
nodes reach as a real cluster's reach S3): the same bytes as a local build, tasks on both nodes,
a node lost mid-build, and a build killed whole resuming from its spools on S3."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.cluster import processes_titled
from tests.conftest import build, ganforge, kill_build_when, s3_objects, spools, tree_bytes
from tests.images import pixels, save
from tests.scenes import write_celeba_inputs
from trainers.data.storage import S3Url, client

INPUTS = "ganforge-inputs"  # the buckets
OUTPUTS = "ganforge-outputs"
FOLDER = ["--max-resolution", "32", "--shard-size", "4", "--seed", "2"]


def put_folder(local: Path, prefix: str) -> str:
    """Every file under `local`, as objects under s3://INPUTS/prefix/; returns that URL."""
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(local).as_posix()}"
        client().put_object(Bucket=INPUTS, Key=key, Body=path.read_bytes())
    return f"s3://{INPUTS}/{prefix}"


@pytest.fixture(scope="module")
def cluster_env(ray_cluster, subprocess_env, s3_env) -> dict[str, str]:
    for bucket in (INPUTS, OUTPUTS):
        client().create_bucket(Bucket=bucket)
    cluster = {"RAY_ADDRESS": ray_cluster.address, "RAY_AUTH_MODE": "disabled"}
    return subprocess_env | s3_env | cluster


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of 12 JPEGs of varied sizes, and a text file that is not an input."""
    root = tmp_path_factory.mktemp("folder")
    for i in range(12):
        save(root / f"faces/{i}.jpg", Image.fromarray(pixels((40 + 2 * i, 36), i)), quality=90)
    (root / "faces/notes.txt").write_text("ignored")
    return root


def nodes_of(stdout: str) -> dict[str, int]:
    """Node id prefix -> tasks, from the build's summary."""
    return {node: int(count) for node, count in re.findall(r"node (\w+)…: (\d+) tasks", stdout)}


def test_cluster_build_from_s3_to_s3_is_the_local_build_with_tasks_on_both_nodes(
    cluster_env, ray_cluster, images, tmp_path
):
    local = tmp_path / "local"
    build(local, source="folder", input=images, num_images=None, max_resolution=32,
          shard_size=4, seed=2, workers=2)  # fmt: skip
    source = put_folder(images, "folder")
    out = f"s3://{OUTPUTS}/folder"
    cli = ganforge("data", "build", "--source", "folder", "--input", f"{source}/", "--out", out,
                   *FOLDER, env=cluster_env)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert s3_objects(S3Url.parse(out)) == tree_bytes(local)  # manifest, report, every shard
    ran = nodes_of(cli.stdout)
    ids = {ray_cluster.node_id(pid)[: len(next(iter(ran)))] for pid in ray_cluster.raylets}
    assert set(ran) == ids and all(ran.values()), cli.stdout  # both nodes did work


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """CelebA-style photos and landmarks (tests/scenes.py), and an image list of 4 of them."""
    root = tmp_path_factory.mktemp("celeba")
    found = write_celeba_inputs(root, 8, seed=5)
    (root / "image_list.txt").write_text(
        "idx orig_idx orig_file proc_md5 final_md5\n"
        + "".join(f"{i} 0 {found[j].name} - -\n" for i, j in enumerate((6, 2, 5, 0)))
    )
    return root


@pytest.mark.parametrize(
    "image_list", [False, True], ids=["best-by-score", "image-list"]
)  # fmt: skip
def test_celeba_from_s3_on_the_cluster_is_the_local_build(
    cluster_env, scenes, image_list, tmp_path
):
    """--input, --landmarks and --image-list as S3 objects; the score pass runs on the cluster
    too. The output is a folder both nodes reach (one machine's disk here; a shared
    filesystem on a real cluster)."""

    def args(root: str) -> list[str]:
        listed = ["--image-list", f"{root}/image_list.txt"] if image_list else ["--num-images", "6"]
        return ["--source", "celeba", "--input", f"{root}/img_celeba", "--landmarks",
                f"{root}/list_landmarks_celeba.txt", "--max-resolution", "16", "--shard-size",
                "4", *listed]  # fmt: skip

    local = ganforge("data", "build", *args(str(scenes)), "--out", str(tmp_path / "local"),
                     "--executor", "local", "--workers", "1", env=cluster_env)  # fmt: skip
    assert local.returncode == 0, local.stderr
    remote = put_folder(scenes, f"celeba-{image_list}")
    cluster = ganforge("data", "build", *args(remote), "--out", str(tmp_path / "cluster"),
                       env=cluster_env)  # fmt: skip
    assert cluster.returncode == 0, cluster.stderr
    assert "ray tasks on 2 node(s)" in cluster.stdout
    assert tree_bytes(tmp_path / "cluster") == tree_bytes(tmp_path / "local")


def test_a_local_path_that_nodes_do_not_see_is_named_before_any_work(cluster_env, tmp_path):
    """A build's local input and output must be on a filesystem every node mounts: each node
    is asked (here a path no node has, as a node without the mount would answer)."""
    check = (
        "import sys; from pathlib import Path\n"
        "from pipelines.dataset.executor import NotShared, RayTasks\n"
        "try:\n    RayTasks().check_shared([Path(sys.argv[1]), Path(sys.argv[2])])\n"
        "except NotShared as error:\n    print(error)\n"
    )
    seen, unseen = tmp_path, tmp_path / "mounted-on-no-node"
    done = subprocess.run([sys.executable, "-c", check, str(seen), str(unseen)],
                          env=cluster_env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{unseen} is not on the filesystem of 2 of the cluster's 2 nodes" in done.stdout


def test_a_lost_node_costs_only_its_in_flight_tasks(cluster_env, ray_cluster, tmp_path):
    """SIGKILL the raylet (and its workers) of the node that is not the head's mid-build, as a
    lost host: the chunks it was processing run again on the head node, no finished chunk is
    redone (its spool files keep their inode), and the output is the local build's."""
    options = {"num_images": 192, "max_resolution": 256, "shard_size": 64, "seed": 4}
    reference = tmp_path / "reference"
    build(reference, **options, workers=2)
    out = tmp_path / "cluster"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    command = [str(Path(sys.executable).parent / "ganforge"), "data", "build", *args]
    other = ray_cluster.raylets[1]  # [0] is the head, where the build's driver is attached
    process = subprocess.Popen([*command, "--out", str(out)], env=cluster_env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        # a chunk finished, and the node to lose is running a task (Ray titles the worker
        # process "ray::<function>" while it does): one in flight that must run again
        deadline = time.monotonic() + 120
        while not (
            (finished := spools(out, "chunk-*.json")) and processes_titled(b"ray::_timed", {other})
        ):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr
            time.sleep(0.02)
        # a finished chunk's records file and its spool
        done = [out / name.replace(".json", end) for name in finished for end in (".json", ".bin")]
        inodes = {path: path.stat().st_ino for path in done}
        ray_cluster.kill_raylet(other)
        rewritten = set()
        while process.poll() is None:
            for path, inode in inodes.items():
                try:
                    if path.stat().st_ino != inode:
                        rewritten.add(path.name)
                except FileNotFoundError:  # the build removes its spools once it is done
                    pass
            time.sleep(0.02)
        stdout, stderr = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
        ray_cluster.ensure_nodes(2)  # the next tests find two nodes again
    assert process.returncode == 0, stderr[-3000:]
    assert not rewritten
    assert tree_bytes(out) == tree_bytes(reference)
    # the summary counts tasks whose results reached the driver: the head's at least
    assert ray_cluster.node_id(ray_cluster.raylets[0])[:12] in nodes_of(stdout)


def test_a_killed_build_resumes_from_its_spools_on_s3(cluster_env, tmp_path):
    """--out s3://: spools go under DIR/.build/ on S3, and a re-run after SIGKILL (the local
    executor) takes the chunks spooled there instead of processing them again, and ends with
    the uninterrupted build's bytes."""
    args = ["data", "build", "--num-images", "128", "--max-resolution", "64", "--shard-size",
            "32", "--seed", "5", "--executor", "local", "--workers", "2"]  # fmt: skip
    reference = tmp_path / "reference"
    whole = ganforge(*args, "--out", str(reference), env=cluster_env)
    assert whole.returncode == 0, whole.stderr
    out = f"s3://{OUTPUTS}/resumed"
    kill_build_when(args, out, "chunk-*.json", cluster_env)
    rerun = ganforge(*args, "--out", out, env=cluster_env)
    assert rerun.returncode == 0, rerun.stderr
    assert s3_objects(S3Url.parse(out)) == tree_bytes(reference)
    assert tasks_of(rerun.stdout) < tasks_of(whole.stdout)  # spooled chunks were not redone


def tasks_of(stdout: str) -> int:
    return int(re.search(r"(\d+) \w+ tasks on", stdout)[1])
