"""infra/ as a cluster engineer uses it, checked without Docker, AWS or Kubernetes: every command
in the files and in README's "Run on a cluster" is parsed by the real CLI it names, the Ray
cluster file passes Ray's own validation, the RayJob has the fields KubeRay's CRD requires, and
images, ports and variables agree between the files and the README."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = dict(re.findall(r"^([\w.-]+)==(\S+)$", (REPO / "requirements.lock").read_text(), re.M))
IMAGE = f"ganforge:{PYPROJECT['project']['version']}"  # what README builds and the clusters run
YAML_FILES = ("compose.yaml", "ray/cluster.yaml", "kuberay/rayjob.yaml")
DOCKERFILES = ("Dockerfile", "services.Dockerfile")
README = "README.md#run-on-a-cluster"
PROGRAMS = ("ganforge", "ray", "mlflow", "prefect", "dvc")  # the CLIs whose commands are parsed

# Fields the ray.io/v1 CRDs require, read off KubeRay's API types (ray-operator/apis/ray/v1/
# raycluster_types.go: a field without omitempty or +optional is in the CRD's `required`) as of
# KubeRay v1.3; v1.4 made rayStartParams optional, so a manifest with it suits both. Kubernetes'
# PodSpec requires containers and a Container its name; a Ray container needs an image and
# KubeRay's default submission mode (K8sJobMode) an entrypoint to submit.
RAYJOB_REQUIRED = [
    "apiVersion",
    "kind",
    "metadata.name",
    "spec.entrypoint",
    "spec.rayClusterSpec.headGroupSpec.rayStartParams",
    "spec.rayClusterSpec.headGroupSpec.template.spec.containers[].name",
    "spec.rayClusterSpec.headGroupSpec.template.spec.containers[].image",
    "spec.rayClusterSpec.workerGroupSpecs[].groupName",
    "spec.rayClusterSpec.workerGroupSpecs[].minReplicas",
    "spec.rayClusterSpec.workerGroupSpecs[].maxReplicas",
    "spec.rayClusterSpec.workerGroupSpecs[].rayStartParams",
    "spec.rayClusterSpec.workerGroupSpecs[].template.spec.containers[].name",
    "spec.rayClusterSpec.workerGroupSpecs[].template.spec.containers[].image",
]


def load(name: str) -> dict:
    return yaml.safe_load((INFRA / name).read_text())


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Run on a cluster\n")
    end = text.index("\n## ", start + 1)
    assert text.startswith("\n## Reading a dataset in training code\n", end)
    return text[start:end]


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuation lines joined, runs of blanks made
    one, comments dropped."""
    lines = [line for line in (INFRA / name).read_text().splitlines() if not line.startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    steps = [
        re.sub(r"\s+", " ", line).split(" ", 1) for line in joined.splitlines() if line.strip()
    ]
    return [(instruction, arguments) for instruction, arguments in steps]


def strings(node) -> list[str]:
    """Every string value in a parsed YAML document."""
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return [node] if isinstance(node, str) else []


def scripts() -> list[tuple[str, str]]:
    """(source, shell text) of everything that may hold a command."""
    found = [(name, text) for name in YAML_FILES for text in strings(load(name))]
    for name in DOCKERFILES:
        for instruction, arguments in dockerfile(name):
            if instruction == "RUN":
                found.append((name, arguments))
            elif instruction in ("CMD", "ENTRYPOINT"):
                found.append((name, shlex.join(json.loads(arguments))))
    blocks = re.findall(r"```bash\n(.*?)```", readme_section(), re.S)
    return found + [(README, block) for block in blocks]


def commands_in(text: str) -> list[list[str]]:
    """The argv of every command of PROGRAMS in a shell text: lines split at ; && || | &,
    leading VAR=value assignments skipped, and a command after `--` (ray job submit --) too."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token.strip(";&|"):
                words.append(token)
                continue
            while words:
                while words and re.fullmatch(r"\w+=.*", words[0]):
                    words = words[1:]
                if len(words) < 2 or words[0] not in PROGRAMS:  # a lone word: a YAML name
                    break
                commands.append(words)
                words = words[words.index("--") + 1 :] if "--" in words else []
            words = []
    return commands


def parse(argv: list[str]) -> dict:
    """argv parsed by its program's own parser, as at the program's start (nothing runs): the
    parsed parameters, or an error for an unknown command or option or a bad value."""
    program, *args = argv
    if program == "prefect":
        from prefect.cli._app import _app  # the command tree behind the `prefect` script

        return dict(_app.parse_args(args, exit_on_error=False, print_error=False)[1].arguments)
    if program == "dvc":
        from dvc.cli.parser import get_main_parser

        return vars(get_main_parser().parse_args(args))
    if program == "ganforge":
        from pipelines.cli import app

        command = typer.main.get_command(app)
    elif program == "ray":
        from ray.scripts.scripts import cli as command
    else:
        from mlflow.cli import cli as command
    context, name = None, program
    # down to the subcommand; typer vendors its own click, so groups are known by their methods
    while hasattr(command, "get_command") and args and not args[0].startswith("-"):
        context = command.context_class(command, info_name=name, parent=context)
        name, *args = args
        command = command.get_command(context, name)
        assert command, f"{' '.join(argv)}: {program} has no command {name!r}"
    if "--help" in args:  # it prints the help of the command found, and exits
        return {}
    return command.make_context(name, args, parent=context).params


COMMANDS = list(
    dict.fromkeys((source, tuple(argv)) for source, text in scripts() for argv in commands_in(text))
)


@pytest.mark.parametrize(
    ("source", "argv"), COMMANDS, ids=[f"{s}: {' '.join(a)[:50]}" for s, a in COMMANDS]
)
def test_every_command_parses_with_the_cli_it_names(source, argv, monkeypatch):
    monkeypatch.chdir(REPO)  # paths in the commands are relative to the checkout
    params = parse(list(argv))
    given = [word for word in argv if word.startswith("s3://")]
    kept = {
        str(v)
        for value in params.values()
        for v in (value if isinstance(value, list | tuple) else [value])
    }
    assert not [url for url in given if not any(url in text for text in kept)], (
        f"{source}: an option turns these s3:// URLs into something else (a Path makes s3:/)"
    )
    for path in (word for word in argv[1:] if word.startswith("configs/")):
        assert (REPO / path).is_file(), f"{source}: {path} does not exist"


def test_each_file_runs_the_commands_it_is_for():
    """The extraction above finds what it should, so an empty or renamed command list fails."""
    programs = {}
    for source, argv in COMMANDS:
        programs.setdefault(source, set()).add(" ".join(argv[:2]))
    assert {"ganforge train"} <= programs["kuberay/rayjob.yaml"]
    assert {"ray start"} <= programs["ray/cluster.yaml"]
    assert {"mlflow server", "prefect server"} <= programs["compose.yaml"]
    assert {"ganforge --help"} <= programs["Dockerfile"]
    readme = {"ganforge data", "ganforge train", "ganforge pipeline", "ganforge sample"}
    assert readme | {"ray up", "ray job", "dvc push", "dvc repro"} <= programs[README]
    # "Build on a cluster": a build from S3 to S3, submitted to the cluster as a job
    readme_commands = [argv for source, argv in COMMANDS if source == README]
    builds = [parse(list(a)) for a in readme_commands if a[:3] == ("ganforge", "data", "build")]
    assert any(str(p["input"]).startswith("s3://") and str(p["out"]).startswith("s3://")
               for p in builds)  # fmt: skip
    assert any(a[:3] == ("ray", "job", "submit") and "build" in a for a in readme_commands)


def test_ray_cluster_passes_rays_validation_with_gpu_workers_from_zero():
    # what `ray up` runs on the file before it calls AWS
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = load("ray/cluster.yaml")
    validate_config(prepare_config(copy.deepcopy(cluster)))
    assert cluster["provider"]["type"] == "aws"
    assert cluster["docker"]["image"].rsplit("/", 1)[-1] == IMAGE
    node_types = cluster["available_node_types"]
    assert not node_types[cluster["head_node_type"]]["resources"].get("GPU")
    gpu_types = [t for t in node_types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["min_workers"] == 0 < t["max_workers"] for t in gpu_types)
    # CPU workers for dataset builds, so the autoscaler (which keeps GPU nodes for GPU work)
    # has somewhere to put their tasks
    cpu_types = [t for name, t in node_types.items() if name != cluster["head_node_type"]
                 and not t["resources"].get("GPU")]  # fmt: skip
    assert cpu_types and all(t["min_workers"] == 0 < t["max_workers"] for t in cpu_types)
    assert all("IamInstanceProfile" in t["node_config"] for t in node_types.values())  # S3


def values_at(node, path: str, where: str = "") -> list:
    """The values at a dotted path, `key[]` meaning every item of a non-empty list; an
    AssertionError naming the first missing field."""
    if not path:
        return [node]
    key, _, rest = path.partition(".")
    name = key.removesuffix("[]")
    assert isinstance(node, dict) and name in node, f"{where}{name} is missing"
    if not key.endswith("[]"):
        return values_at(node[name], rest, f"{where}{name}.")
    assert isinstance(node[name], list) and node[name], f"{where}{name} is not a non-empty list"
    return [
        v
        for i, item in enumerate(node[name])
        for v in values_at(item, rest, f"{where}{name}[{i}].")
    ]


def test_rayjob_has_the_fields_kuberays_crd_requires_and_fits_its_workers():
    job = load("kuberay/rayjob.yaml")
    for path in RAYJOB_REQUIRED:
        values_at(job, path)
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == LOCK["ray"]  # the ray the image installs
    images = values_at(cluster, "headGroupSpec.template.spec.containers[].image")
    images += values_at(cluster, "workerGroupSpecs[].template.spec.containers[].image")
    assert {image.rsplit("/", 1)[-1] for image in images} == {IMAGE}
    gpus = 0
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        for container in group["template"]["spec"]["containers"]:
            gpus += group["replicas"] * int(
                container["resources"]["limits"].get("nvidia.com/gpu", 0)
            )
    [train] = commands_in(job["spec"]["entrypoint"])
    params = parse(train)
    assert params["gpu"] and 0 < params["workers"] <= gpus, "one Ray Train worker per GPU"


def test_ganforge_image_is_cuda_with_the_locked_dependencies():
    steps = dockerfile("Dockerfile")
    [base] = [arguments for instruction, arguments in steps if instruction == "FROM"]
    assert base.startswith("nvidia/cuda:")
    runs = [arguments for instruction, arguments in steps if instruction == "RUN"]
    assert any("uv pip install -c requirements.lock" in run for run in runs)
    assert any(run.endswith("uv pip install --no-deps .") for run in runs)  # ganforge itself
    [python] = [re.search(r"--python (\S+)", run)[1] for run in runs if "uv venv" in run]
    assert Version(python) in SpecifierSet(PYPROJECT["project"]["requires-python"])
    copied = {arguments.split()[0] for instruction, arguments in steps if instruction == "COPY"}
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} | {"configs"} <= copied  # code, and the presets
    assert "ENTRYPOINT" not in dict(steps)  # Ray's launcher starts the container with `bash`


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_only_what_its_build_context_holds(name):
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)[1]
    ignore = (INFRA / f"{name}.dockerignore").read_text().split("\n")
    patterns = [line for line in ignore if line and not line.startswith("#")]
    for instruction, arguments in dockerfile(name):
        if instruction != "COPY":
            continue
        if arguments.startswith("--from=ghcr.io/astral-sh/uv:"):
            assert arguments.split()[0] == f"--from=ghcr.io/astral-sh/uv:{makefile_uv}"
            continue
        for source in arguments.split()[:-1]:
            assert (REPO / source).exists(), f"{name}: COPY {source}: no such path"
            # .dockerignore: the last pattern that matches decides, `!` re-includes
            matching = [p for p in patterns if fnmatch.fnmatch(source, p.lstrip("!"))]
            assert matching and matching[-1].startswith("!"), f"{name}: {source} is ignored"


def compose_environment(service: dict) -> dict[str, str]:
    """A service's environment with ${VAR:-default} resolved to its default, as a fresh shell
    that sets none of them gets it."""
    return {
        k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v)) for k, v in service["environment"].items()
    }


def published_ports(service: dict) -> list[int]:
    ports = [str(port).split(":") for port in service.get("ports", [])]
    assert all(host == container for host, container in ports), "clients use the same port"
    return [int(host) for host, _ in ports]


def test_compose_services_are_wired_to_each_other():
    services = load("compose.yaml")["services"]
    mlflow, prefect, postgres = services["mlflow"], services["prefect"], services["postgres"]
    [server] = commands_in(mlflow["command"])
    server = parse(server)
    assert server["port"] in published_ports(mlflow)
    assert parse(commands_in(prefect["command"])[0])["port"] in published_ports(prefect)
    # each database URL names the postgres service, a database it creates and a driver the
    # services image installs
    databases = {compose_environment(postgres)["POSTGRES_DB"]}
    databases |= set(
        re.findall(r"CREATE DATABASE (\w+)", (INFRA / "postgres/init.sql").read_text())
    )
    prefect_url = compose_environment(prefect)["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    services_image = " ".join(arguments for _, arguments in dockerfile("services.Dockerfile"))
    installed = set(services_image.split())
    for url in (server["backend_store_uri"], prefect_url):
        parts = urlsplit(url)
        assert parts.hostname == "postgres" and parts.path.lstrip("/") in databases, url
        driver = parts.scheme.split("+")[1]
        assert {driver, f"{driver}-binary"} & installed, url
    assert "-c /tmp/requirements.lock mlflow prefect" in services_image
    # artifacts go to a bucket that create-buckets makes, on the MinIO service
    bucket = urlsplit(server["artifacts_destination"]).hostname
    assert f"store/{bucket}" in services["create-buckets"]["command"][0]
    endpoint = urlsplit(compose_environment(mlflow)["MLFLOW_S3_ENDPOINT_URL"])
    assert endpoint.hostname == "minio" and endpoint.port in published_ports(services["minio"])


def test_compose_sets_only_variables_the_pinned_servers_read():
    import mlflow.environment_variables
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names  # with the legacy aliases

    prefect_names = _get_valid_setting_names(Settings)
    services = load("compose.yaml")["services"]
    for name in services["mlflow"]["environment"]:
        assert name.startswith("AWS_") or hasattr(mlflow.environment_variables, name), name
    for name in services["prefect"]["environment"]:
        assert name in prefect_names, name


def test_readme_section_gives_the_ports_variables_and_image_of_infra():
    section = readme_section()
    services = load("compose.yaml")["services"]
    table = dict(re.findall(r"^\| `([\w-]+)` \| ([\d, —]+) \|", section, re.M))
    documented = {
        name: [int(p) for p in re.findall(r"\d+", ports)] for name, ports in table.items()
    }
    assert documented == {name: published_ports(service) for name, service in services.items()}

    given: dict[str, set[str]] = {}
    for name, value in re.findall(r"\b([A-Z][A-Z0-9_]+)=([^\s`'\"]+)", section):
        if not value.startswith("$"):  # a use, not a setting
            given.setdefault(name, set()).add(value)
    [tracking_uri] = given["MLFLOW_TRACKING_URI"]
    host = urlsplit(tracking_uri).hostname
    mlflow_env = compose_environment(services["mlflow"])
    minio_env = compose_environment(services["minio"])
    s3_port = urlsplit(mlflow_env["MLFLOW_S3_ENDPOINT_URL"]).port
    [ray_address] = re.findall(
        r"--env=RAY_ADDRESS=(\S+)", " ".join(load("ray/cluster.yaml")["docker"]["run_options"])
    )
    expected = {
        "MLFLOW_TRACKING_URI": f"http://{host}:{published_ports(services['mlflow'])[0]}",
        "PREFECT_API_URL": f"http://{host}:{published_ports(services['prefect'])[0]}/api",
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{s3_port}",
        "AWS_ACCESS_KEY_ID": minio_env["MINIO_ROOT_USER"],
        "AWS_SECRET_ACCESS_KEY": minio_env["MINIO_ROOT_PASSWORD"],
        "MLFLOW_S3_ENDPOINT_URL": mlflow_env["MLFLOW_S3_ENDPOINT_URL"],
        "RAY_ADDRESS": ray_address,
    }
    assert {name: given.get(name) for name in expected} == {n: {v} for n, v in expected.items()}
    # the pods of the RayJob, and the Prefect UI, use the same addresses
    cluster = load("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for env in values_at({"pods": pods}, "pods[].template.spec.containers[].env[]"):
        assert env["value"] == expected[env["name"]], env
    assert (
        compose_environment(services["prefect"])["PREFECT_SERVER_UI_API_URL"]
        == expected["PREFECT_API_URL"]
    )
    allowed = mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert any(
        fnmatch.fnmatch(urlsplit(expected["MLFLOW_TRACKING_URI"]).netloc, p) for p in allowed
    )
    # the image README builds is the one both cluster files run
    assert re.search(r"docker build -f infra/Dockerfile -t (\S+) \.", section)[1] == IMAGE
