"""The deployment files say what is true: cluster.yaml, k8s/rayjob.yaml, Dockerfile, the Makefile, jobs/.

Fast and offline: no Ray cluster, no Docker engine, no Kubernetes API. What each is checked against:
- cluster.yaml: Ray's own cluster-config schema (ray/autoscaler/ray-schema.json), through the same
  `prepare_config` + `validate_config` that `ray up` runs before it talks to AWS (jsonschema on the
  schema file alone if those cannot be imported), then the structure fizzbot needs.
- k8s/rayjob.yaml and k8s/rayservice.yaml: parsed, then their fields checked against KubeRay's v1 Go types (ray.io/v1:
  rayjob_types.go, raycluster_types.go), transcribed below as a partial JSON schema; KubeRay's CRD
  OpenAPI schema is not available offline.
- Dockerfile and .dockerignore: parsed; what they copy, run and name must exist.
- Every command written in these files or in the README (`ray job submit ...`, an entrypoint, a
  `docker run ... fizzbot ...`) names scripts, configs and subcommands that exist, with overrides
  that fizzbot's config accepts.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYJOB_YAML = ROOT / "k8s" / "rayjob.yaml"
RAYSERVICE_YAML = ROOT / "k8s" / "rayservice.yaml"
DOCKERFILE = ROOT / "Dockerfile"
MAKEFILE = ROOT / "Makefile"
README = ROOT / "README.md"
JOB_SCRIPTS = sorted(p for p in (ROOT / "jobs").glob("*.py") if not p.name.startswith("_"))


# --- helpers -------------------------------------------------------------------------------------


def makefile_var(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(.+)$", MAKEFILE.read_text(), re.M)
    assert match, f"Makefile sets no {name}"
    return match.group(1).strip()


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ray_pin() -> str:
    (dep,) = [d for d in pyproject()["project"]["dependencies"] if re.match(r"ray[\[=]", d)]
    return dep.split("==")[1]


def fizzbot_subcommands() -> set[str]:
    import argparse

    from fizzbot.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def check_fizzbot_command(argv: list[str]) -> None:
    """`fizzbot SUB [--config FILE] [key=value ...]`: the subcommand, the config and the overrides exist."""
    assert argv[0] == "fizzbot", argv
    assert argv[1] in fizzbot_subcommands() or argv[1] in ("--help", "-h"), f"no fizzbot subcommand {argv[1]!r}"
    check_config_args(argv[2:])


def check_job_command(argv: list[str]) -> None:
    """`python jobs/X.py --config configs/Y.yaml [flags] [key=value ...]` as a Ray job would run it."""
    assert argv[0] == "python", argv
    script = ROOT / argv[1]
    assert argv[1].startswith("jobs/") and script.is_file(), f"{argv[1]} is not a script under jobs/"
    check_config_args(argv[2:])


def check_config_args(args: list[str]) -> None:
    from fizzbot.config import load_config

    config, overrides = None, []
    for i, arg in enumerate(args):
        if arg == "--config":
            config = args[i + 1]
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
    if config is not None:
        assert config.startswith("configs/") and (ROOT / config).is_file(), f"no config file {config}"
        load_config(str(ROOT / config), overrides)  # raises on an unknown key or a bad value


def comment_commands(text: str, program: str) -> list[list[str]]:
    """Commands starting with `program` in a file's `#` comments, `\\` continuation lines joined."""
    lines = [re.sub(r"^\s*#\s?", "", line) for line in text.splitlines() if line.lstrip().startswith("#")]
    return shell_commands("\n".join(lines), program)


def join_continued_lines(text: str) -> str:
    """A command continued over lines with a backslash, as one line."""
    return re.sub(r"\\\n\s*", " ", text)


def shell_commands(text: str, program: str) -> list[list[str]]:
    joined = join_continued_lines(text)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith(program + " "):
            commands.append(shlex.split(line, comments=True))
    return commands


def after_double_dash(argv: list[str]) -> list[str]:
    return argv[argv.index("--") + 1 :]


# --- cluster.yaml (ray up) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_validates_against_rays_schema(cluster):
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    assert schema_path.is_file(), "the installed ray ships no ray-schema.json"
    jsonschema.validate(cluster, json.loads(schema_path.read_text()))  # the file as written
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:  # a Ray without the private module: the schema check above is what remains
        return
    # What `ray up` does before it needs AWS: merge Ray's AWS defaults, then validate the result.
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["setup_commands"][: len(cluster["setup_commands"])] == cluster["setup_commands"]


def test_cluster_yaml_is_an_aws_cluster_with_a_cpu_head_and_autoscaling_gpu_workers(cluster):
    provider = cluster["provider"]
    assert provider["type"] == "aws" and provider["region"] == "us-west-2"
    assert "availability_zone" not in provider  # left to AWS
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["node_config"]["InstanceType"].startswith(("m5", "m6", "m7", "c5", "c6", "c7", "r5", "r6"))
    workers = {name: t for name, t in types.items() if name != cluster["head_node_type"]}
    gpu_workers = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_workers, "no worker type with a GPU"
    for name, node_type in gpu_workers.items():
        assert node_type["min_workers"] == 0, f"{name}: GPU workers should scale from zero"
        assert 1 <= node_type["max_workers"] <= cluster["max_workers"]
        assert node_type["node_config"]["InstanceType"].startswith(("g5.", "g6", "g6e.", "p4", "p5")), name
    for name, node_type in types.items():
        assert node_type["node_config"].get("ImageId"), f"{name}: no ImageId (Ray's default AMI is Ubuntu 18.04)"
    assert cluster["idle_timeout_minutes"] > 0
    assert not cluster.get("docker"), "this cluster installs into a venv on the AMI; docker: would be a second way"


def test_cluster_yaml_installs_the_working_copy_with_the_makefiles_torch_pin(cluster):
    assert cluster["file_mounts"] == {"/home/ubuntu/fizzbot": "."}
    commands = cluster["setup_commands"]
    torch_pin = makefile_var("TORCH_PIN")
    assert any(re.search(rf"pip install .*[\"']?{re.escape(torch_pin)}[\"']?(\s|$)", c) for c in commands), torch_pin
    install = [c for c in commands if re.search(r"pip install\b.*\s/home/ubuntu/fizzbot(\s|$)", c)]
    assert install, "no setup command installs the working copy"
    # torch before fizzbot, so that fizzbot's torch range does not pick a build of its own.
    torch_at = next(i for i, c in enumerate(commands) if torch_pin in c)
    assert torch_at < commands.index(install[0])
    assert any("boto3" in c for c in cluster["head_setup_commands"]), "the head's autoscaler needs boto3"
    assert ".gitignore" in cluster.get("rsync_filter", []), "file_mounts would send .venv/, data/, runs/"


def test_cluster_yaml_commands_are_valid_shell_and_ray_start_flags_exist(cluster):
    from ray.scripts.scripts import start

    flags = {opt for param in start.params for opt in param.opts}
    keys = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands"]
    for key in keys:
        for command in cluster.get(key, []):
            result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
            assert result.returncode == 0, f"{key}: {command!r}: {result.stderr}"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start_command,) = [c for c in cluster[key] if "ray start" in c]
        for flag in re.findall(r"\s(--[a-z-]+)", start_command):
            assert flag in flags, f"`ray start` has no {flag}"
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--head" in head_start and "--dashboard-host=0.0.0.0" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert "$RAY_HEAD_IP" in " ".join(cluster["worker_start_ray_commands"])


def test_cluster_yaml_header_gives_the_commands_and_they_name_real_files():
    text = CLUSTER_YAML.read_text()
    for words in ("ray up", "ray dashboard cluster.yaml", "ray attach cluster.yaml", "ray down"):
        assert words in text, words
    submits = [c for c in comment_commands(text, "ray") if c[:3] == ["ray", "job", "submit"]]
    assert submits, "no `ray job submit` in cluster.yaml's comments"
    for argv in submits:
        assert "--working-dir" in argv and "--address" in argv
        job = after_double_dash(argv)
        check_job_command(job)
        assert "configs/train_gpu_qlora.yaml" in job
        assert "training.wait_for_gpus=true" in job  # the GPU group starts at zero nodes


# --- k8s/rayjob.yaml (KubeRay) --------------------------------------------------------------------

# Partial schema from KubeRay's v1 Go types (ray-operator/apis/ray/v1): the field names of RayJobSpec,
# RayClusterSpec, HeadGroupSpec, WorkerGroupSpec and AutoscalerOptions, with their JSON types.
# Pod templates are Kubernetes core types and are checked by the tests below instead.
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
KUBERAY_V1_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "rayClusterSpec": {"$ref": "#/$defs/rayClusterSpec"},
                "submitterPodTemplate": {"type": "object"},
                "metadata": _STRING_MAP,
                "clusterSelector": _STRING_MAP,
                "submitterConfig": {"type": "object"},
                "managedBy": {"type": "string"},
                "deletionStrategy": {"type": "object"},
                "entrypoint": {"type": "string"},
                "runtimeEnvYAML": {"type": "string"},
                "jobId": {"type": "string"},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode"]},
                "entrypointResources": {"type": "string"},
                "entrypointNumCpus": {"type": "number"},
                "entrypointNumGpus": {"type": "number"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "suspend": {"type": "boolean"},
                "schedule": {"type": "string"},
            },
        },
    },
    "$defs": {
        "rayClusterSpec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["headGroupSpec"],
            "properties": {
                "headGroupSpec": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["template"],
                    "properties": {
                        "serviceType": {"type": "string"},
                        "headService": {"type": "object"},
                        "enableIngress": {"type": "boolean"},
                        "rayStartParams": _STRING_MAP,
                        "template": {"type": "object", "required": ["spec"]},
                    },
                },
                "workerGroupSpecs": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["groupName", "minReplicas", "maxReplicas", "template"],
                        "properties": {
                            "groupName": {"type": "string"},
                            "replicas": {"type": "integer", "minimum": 0},
                            "minReplicas": {"type": "integer", "minimum": 0},
                            "maxReplicas": {"type": "integer", "minimum": 0},
                            "numOfHosts": {"type": "integer", "minimum": 1},
                            "rayStartParams": _STRING_MAP,
                            "template": {"type": "object", "required": ["spec"]},
                            "scaleStrategy": {"type": "object"},
                        },
                    },
                },
                "rayVersion": {"type": "string"},
                "enableInTreeAutoscaling": {"type": "boolean"},
                "autoscalerOptions": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "resources": {"type": "object"},
                        "image": {"type": "string"},
                        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                        "env": {"type": "array"},
                        "envFrom": {"type": "array"},
                        "volumeMounts": {"type": "array"},
                        "securityContext": {"type": "object"},
                        "idleTimeoutSeconds": {"type": "integer", "minimum": 0},
                        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
                    },
                },
                "headServiceAnnotations": _STRING_MAP,
                "suspend": {"type": "boolean"},
            },
        }
    },
}


# RayServiceSpec (rayservice_types.go): the Serve config and the same RayClusterSpec.
KUBERAY_V1_RAYSERVICE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["serveConfigV2", "rayClusterConfig"],
            "properties": {
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": {"$ref": "#/$defs/rayClusterSpec"},
                "serveService": {"type": "object"},
                "upgradeStrategy": {"type": "object"},
                "excludeHeadPodFromServeSvc": {"type": "boolean"},
            },
        },
    },
    "$defs": KUBERAY_V1_SCHEMA["$defs"],
}


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(RAYJOB_YAML.read_text()) if d]


@pytest.fixture(scope="module")
def rayjob(k8s_docs) -> dict:
    (job,) = [d for d in k8s_docs if d.get("kind") == "RayJob"]
    return job


@pytest.fixture(scope="module")
def rayservice() -> dict:
    (service,) = [d for d in yaml.safe_load_all(RAYSERVICE_YAML.read_text()) if d]
    return service


def ray_cluster_spec(resource: dict) -> dict:
    return resource["spec"]["rayClusterSpec" if resource["kind"] == "RayJob" else "rayClusterConfig"]


def pod_templates(resource: dict) -> dict[str, dict]:
    spec = ray_cluster_spec(resource)
    templates = {"head": spec["headGroupSpec"]["template"]}
    for group in spec.get("workerGroupSpecs", []):
        templates[group["groupName"]] = group["template"]
    if "submitterPodTemplate" in resource["spec"]:
        templates["submitter"] = resource["spec"]["submitterPodTemplate"]
    return templates


def test_rayjob_matches_kuberays_v1_fields(rayjob):
    import jsonschema

    jsonschema.validate(rayjob, KUBERAY_V1_SCHEMA)
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"] == ray_pin(), "rayVersion must be the Ray that the image installs"


def test_rayjob_entrypoint_runs_the_pipeline_from_the_images_workspace(rayjob):
    spec = rayjob["spec"]
    argv = shlex.split(spec["entrypoint"])
    check_job_command(argv)
    assert argv[1] == "jobs/pipeline.py" and "configs/train_gpu_qlora.yaml" in argv
    assert "training.wait_for_gpus=true" in argv  # the GPU group starts at zero pods
    # The code is in the image: the working_dir the submitter uploads is the image's WORKDIR, which
    # holds the jobs/ and configs/ folders the entrypoint names.
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    workdir = dockerfile_values("WORKDIR")[-1]
    assert runtime_env["working_dir"] == workdir
    copied = {dest.rstrip("/").removeprefix("./") for _, dest in dockerfile_copies()}
    assert {"jobs", "configs"} <= copied


def test_rayjob_has_a_head_and_an_autoscaling_gpu_worker_group(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    assert head["resources"]["requests"] and head["resources"]["limits"]
    gpu_groups = [
        g for g in cluster["workerGroupSpecs"]
        if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
    ]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    for group in gpu_groups:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        # Extended resources: Kubernetes requires requests == limits.
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert resources["requests"].get("cpu") and resources["requests"].get("memory")
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]


@pytest.mark.parametrize("kind", ["RayJob", "RayService"])
def test_k8s_containers_all_run_the_fizzbot_image_and_share_the_volume(kind, rayjob, rayservice, k8s_docs):
    image = f"{makefile_var('IMAGE')}:gpu"  # what `make docker-build` tags
    claims = {d["metadata"]["name"]: d for d in k8s_docs if d.get("kind") == "PersistentVolumeClaim"}
    resource = rayjob if kind == "RayJob" else rayservice
    text = resource["spec"]["entrypoint"] if kind == "RayJob" else resource["spec"]["serveConfigV2"]
    shared_paths = set(re.findall(r"=(/[\w-]+)/", text))
    assert shared_paths == {"/shared"}
    for name, template in pod_templates(resource).items():
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            assert container["image"].rsplit("/", 1)[-1] == image, f"{name}: {container['image']}"
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            for path in shared_paths:  # every path the entrypoint writes is on the shared claim, everywhere
                claim = volumes[mounts[path]]["persistentVolumeClaim"]["claimName"]
                assert claim in claims and "ReadWriteMany" in claims[claim]["spec"]["accessModes"]
        assert pod.get("securityContext", {}).get("runAsNonRoot") is True
    options = ray_cluster_spec(resource).get("autoscalerOptions", {})
    assert options.get("image", image).rsplit("/", 1)[-1] == image


def test_rayservice_matches_kuberays_v1_fields_and_serves_fizzbots_app(rayservice):
    import ast

    import jsonschema

    jsonschema.validate(rayservice, KUBERAY_V1_RAYSERVICE_SCHEMA)
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True and cluster["rayVersion"] == ray_pin()
    serve_config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert serve_config["http_options"]["host"] == "0.0.0.0"  # KubeRay's serve service reaches the proxies
    (app,) = serve_config["applications"]
    module, _, attribute = app["import_path"].partition(":")
    source = ROOT / (module.replace(".", "/") + ".py")
    assert attribute in {n.name for n in ast.parse(source.read_text()).body if isinstance(n, ast.FunctionDef)}
    # Its config file is in the image's /workspace (WORKDIR), copied from the repo's configs/.
    workdir = dockerfile_values("WORKDIR")[-1]
    config = Path(app["args"]["config"]).relative_to(workdir).as_posix()
    assert set(app["args"]) <= {"config", "overrides"}
    check_config_args(["--config", config, *app["args"]["overrides"]])
    assert "serve.num_gpus=1" in app["args"]["overrides"]
    gpu = [g for g in cluster["workerGroupSpecs"]
           if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
    assert gpu, "serve.num_gpus=1 needs a GPU worker group"


# --- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def dockerfile_values(instruction: str) -> list[str]:
    return [args for word, args in dockerfile_instructions() if word == instruction]


def dockerfile_copies() -> list[tuple[list[str], str]]:
    copies = []
    for args in dockerfile_values("COPY") + dockerfile_values("ADD"):
        words = [w for w in shlex.split(args) if not w.startswith("--chown") and not w.startswith("--chmod")]
        if any(w.startswith("--from") for w in words):
            continue
        copies.append((words[:-1], words[-1]))
    return copies


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` (relative, with /) out of the build context."""
    excluded = False
    for pattern in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*" if part == "**" else re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            for part in re.split(r"(\*\*)", pattern)
        )
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[: i + 1])) for i in range(len(parts))):
            excluded = not negate
    return excluded


def test_dockerfile_copies_what_exists_and_dockerignore_keeps_it():
    copies = dockerfile_copies()
    assert copies
    for sources, _ in copies:
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: no such file or folder"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if "__pycache__" in relative or relative.endswith(".pyc"):
                    continue
                assert not dockerignore_excludes(relative), f".dockerignore drops {relative}, which COPY needs"
    for kept_out in (".venv/bin/python", "runs/x/config.yaml", "data/demo-corpus/a.json", ".git/HEAD",
                     "fizzbot/__pycache__/cli.cpython-311.pyc"):
        assert dockerignore_excludes(kept_out), kept_out


def test_dockerfile_variants_resolve_to_a_base_stage():
    stages = {}
    for args in dockerfile_values("FROM"):
        words = args.split()
        if len(words) == 3 and words[1].upper() == "AS":
            stages[words[2]] = words[0]
    # The global ARG (before the first FROM) that the final FROM uses.
    text = DOCKERFILE.read_text()
    head = text[: text.index("\nFROM ")]
    assert re.search(r"^ARG VARIANT=gpu$", head, re.M), "VARIANT must default to gpu"
    final = dockerfile_values("FROM")[-1]
    assert "${VARIANT}" in final
    for variant in ("gpu", "cpu"):
        stage = final.replace("${VARIANT}", variant).split()[0]
        assert stage in stages, f"VARIANT={variant}: no stage {stage}"
    assert "nvidia/cuda" in stages["base-gpu"] and "python:3.11" in stages["base-cpu"]
    for variant in re.findall(r"--build-arg VARIANT=(\w+)", MAKEFILE.read_text()):
        assert variant in ("gpu", "cpu")
    # The torch pin defaults to the Makefile's, which passes its own.
    (torch_arg,) = [a for a in dockerfile_values("ARG") if a.startswith("TORCH_PIN=")]
    assert torch_arg.split("=", 1)[1] == makefile_var("TORCH_PIN")


def test_dockerfile_runs_as_a_non_root_user_and_its_commands_exist():
    users = dockerfile_values("USER")
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert not dockerfile_values("ENTRYPOINT"), "an ENTRYPOINT would prefix the Makefile's `fizzbot ...` commands"
    (cmd,) = dockerfile_values("CMD")
    check_fizzbot_command(json.loads(cmd))
    assert "fizzbot" in pyproject()["project"]["scripts"]
    assert dockerfile_values("WORKDIR")[-1] == "/workspace"


def makefile_recipes() -> dict[str, str]:
    recipes, target = {}, None
    for line in MAKEFILE.read_text().splitlines():
        match = re.match(r"^([a-zA-Z0-9_-]+):", line)
        if match:
            target = match.group(1)
            recipes.setdefault(target, "")
        elif line.startswith("\t") and target:
            recipes[target] += line[1:] + "\n"
        elif not line.strip():
            target = None
    return recipes


def test_makefile_docker_targets_run_real_subcommands_and_configs():
    recipes = {t: r for t, r in makefile_recipes().items() if t.startswith("docker-")}
    assert {"docker-build", "docker-build-cpu", "docker-train-gpu", "docker-train-cpu", "docker-smoke",
            "docker-smoke-cpu"} <= set(recipes)
    runs = 0
    for target, recipe in recipes.items():
        recipe = join_continued_lines(recipe)
        for line in recipe.splitlines():
            if line.startswith("docker run"):
                assert "/workspace" in line and "-w /workspace" in line, target
                words = shlex.split(line.replace("$(IMAGE)", makefile_var("IMAGE")).replace("$$", "$"))
                check_fizzbot_command(words[words.index("fizzbot"):])
                runs += 1
        for path in re.findall(r"\b((?:jobs|configs)/[\w./-]+)", recipe):
            assert (ROOT / path).exists(), f"{target}: {path}"
    assert runs >= 4


# --- README and Makefile ----------------------------------------------------------------------------


def readme_targets() -> set[str]:
    text = README.read_text()
    targets = set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", text))
    targets |= set(re.findall(r"`((?:docker|cluster)-[a-z0-9-]+)`", text))
    return targets


def test_every_make_target_the_readme_names_exists_and_make_help_lists_it_once():
    targets = readme_targets()
    assert {"demo", "test", "help", "cluster-up", "cluster-down", "docker-build", "docker-smoke-cpu"} <= targets
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    for target in sorted(targets):
        result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, env=env)
        assert result.returncode == 0, f"make -n {target}: {result.stderr}"
    result = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, env=env, check=True)
    listed: dict[str, int] = {}
    for line in result.stdout.splitlines():
        name, _, description = line.strip().partition(" ")
        assert description.strip(), f"`make help` gives {name} no description"
        listed[name] = listed.get(name, 0) + 1
    for target in targets:
        assert listed.get(target) == 1, f"`make help` lists {target} {listed.get(target, 0)} times"
    assert all(count == 1 for count in listed.values())


def readme_code() -> str:
    """The README's fenced code blocks, one after another."""
    return "\n".join(re.findall(r"^```[a-z]*\n(.*?)^```", README.read_text(), re.M | re.S))


def test_readme_job_and_fizzbot_commands_name_real_files():
    code = readme_code()
    submits = [c for c in shell_commands(code, "ray") if c[:3] == ["ray", "job", "submit"]]
    assert len(submits) >= 5
    for argv in submits:
        check_job_command(after_double_dash(argv))
    lines = [line.split(" #")[0] for line in join_continued_lines(code).splitlines() if line.startswith("fizzbot ")]
    examples = [line for line in lines if not re.search(r"[\[(<]", line)]
    assert len(examples) >= 5  # the usage synopses ([--flag], (a | b), <name>) are not commands
    for line in examples:
        check_fizzbot_command(shlex.split(line, comments=True))


# --- jobs/ ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", JOB_SCRIPTS, ids=lambda p: p.name)
def test_job_scripts_do_nothing_at_import_and_have_main(script):
    probe = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(script.parent)!r})\n"
        f"spec = importlib.util.spec_from_file_location('job_under_test', {str(script)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "assert callable(getattr(module, 'main', None)), 'no main()'\n"
        "heavy = sorted(m for m in ('ray', 'torch', 'fizzbot', 'transformers') if m in sys.modules)\n"
        "assert not heavy, f'imported at import time: {heavy}'\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == "", (result.stdout, result.stderr)


@pytest.mark.parametrize("script", JOB_SCRIPTS, ids=lambda p: p.name)
def test_job_scripts_answer_help_as_a_ray_job_runs_them(script):
    # `ray job submit --working-dir . -- python jobs/X.py`: the script's folder is sys.path[0].
    result = subprocess.run([sys.executable, str(script.relative_to(ROOT)), "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout
