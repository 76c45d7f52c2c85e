"""infra/: the container image, the `ray up` config and the Kubernetes manifests are checked
against what they refer to (schema, files, flags, names, ports), since none can run here."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
IMAGE = "singan-fleet"  # the name the manifests use; kustomize maps it to the registry's
SECRETS = {"ray-auth", "s3-credentials", "mlflow-backend"}  # created by hand (infra/README.md)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def dependency(name: str) -> Requirement:
    """The project's requirement `name`, from its core dependencies or an extra."""
    project = pyproject()["project"]
    listed = [*project["dependencies"], *project["optional-dependencies"]["fleet"]]
    return next(r for r in map(Requirement, listed) if r.name == name)


def k8s_documents() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted(K8S.glob("*.yaml"))}


# --- the image ------------------------------------------------------------------------------

def dockerfile() -> str:
    return (INFRA / "docker" / "Dockerfile").read_text()


def test_dockerfile_base_copies_and_install_line():
    text = dockerfile()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert base == "rayproject/ray:2.60.0-py311-gpu"
    assert dependency("ray").specifier.contains(base.split(":")[1].split("-")[0])
    for line in re.findall(r"^COPY (?:--\S+ )*(.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is missing"
    # torch: pinned, the version the Makefile tests with, and allowed by pyproject.
    torch_version = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M).group(1)
    makefile = (ROOT / "Makefile").read_text()
    assert f"torch=={torch_version}" in makefile
    assert dependency("torch").specifier.contains(torch_version)
    # The project itself is installed from its folder with the fleet extra, at the versions
    # of constraints.txt, which the Makefile (CI) installs too.
    assert re.search(r'^RUN pip install --no-cache-dir -c constraints.txt "\.\[fleet\]" ', text, re.M)
    assert "-c constraints.txt" in makefile
    ignored = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "runs", "outputs"} <= set(ignored)


@pytest.mark.skipif(shutil.which("hadolint", path=str(Path(sys.executable).parent)) is None,
                    reason="hadolint not installed")
def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    done = subprocess.run([hadolint, str(INFRA / "docker" / "Dockerfile")], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# --- ray up ---------------------------------------------------------------------------------

def test_cluster_yaml_is_valid_for_ray_up():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["CPU"] == 0  # no trainings on the head
    workers = [t for name, t in config["available_node_types"].items()
               if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] >= 1 for t in workers)
    assert config["docker"]["image"].endswith(f"/{IMAGE}:{pyproject()['project']['version']}")


# --- Kubernetes -----------------------------------------------------------------------------

def test_kustomization_lists_every_manifest_and_the_image():
    docs = k8s_documents()
    kustomization = docs.pop("kustomization.yaml")[0]
    assert sorted(kustomization["resources"]) == sorted(docs)
    [image] = kustomization["images"]
    assert image["name"] == IMAGE and image["newTag"] == pyproject()["project"]["version"]


def containers(doc) -> list[dict]:
    """Every container spec anywhere in a manifest."""
    found = []
    if isinstance(doc, dict):
        if "containers" in doc:
            found += doc["containers"]
        for value in doc.values():
            found += containers(value)
    elif isinstance(doc, list):
        for value in doc:
            found += containers(value)
    return found


def test_images_secrets_and_no_credentials():
    for name, docs in k8s_documents().items():
        for container in containers(docs):
            assert container["image"] == IMAGE, (name, container["name"])
        text = (K8S / name).read_text()
        referenced = set(re.findall(r"secretKeyRef: \{name: ([\w-]+)", text))
        referenced |= set(re.findall(r"secretRef: \{name: ([\w-]+)", text))
        assert referenced <= SECRETS, name
        assert not re.search(r"AKIA[0-9A-Z]{16}|password:|aws_secret_access_key", text, re.I)
    readme = (INFRA / "README.md").read_text()
    for secret in SECRETS:
        assert f"create secret generic {secret}" in readme


def test_ray_cluster_and_job():
    docs = k8s_documents()
    [cluster] = docs["raycluster.yaml"]
    [job] = docs["rayjob.yaml"]
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]  # one cluster shape, no drift
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] and spec["rayVersion"] == ray.__version__
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    [gpu] = spec["workerGroupSpecs"]
    [worker] = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert gpu["minReplicas"] < gpu["maxReplicas"]
    for container in containers(docs["raycluster.yaml"]) + containers(docs["rayjob.yaml"]):
        env = {e["name"]: e for e in container.get("env", [])}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "RAY_AUTH_TOKEN" in env
    assert job["spec"]["shutdownAfterJobFinishes"] is True and job["spec"]["backoffLimit"] >= 1


def test_job_entrypoint_runs_our_script_with_our_flags_against_our_mlflow():
    docs = k8s_documents()
    [job] = docs["rayjob.yaml"]
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[0] == "python" and (ROOT / command[1]).is_file()
    spec = importlib.util.spec_from_file_location("train_manifest", ROOT / command[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = module.build_parser().parse_args(command[2:])  # every flag exists and parses
    deployment, service = docs["mlflow.yaml"]
    host, port = re.match(r"http://([^:/]+):(\d+)$", args.tracking_uri).groups()
    assert host.split(".")[:2] == [service["metadata"]["name"], docs["namespace.yaml"][0][
        "metadata"]["name"]]
    [port_spec] = service["spec"]["ports"]
    assert int(port) == port_spec["port"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert port_spec["targetPort"] == container["ports"][0]["containerPort"]
    assert f"--port {port_spec['targetPort']}" in container["args"][0]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert f"{host}:{port}" in container["args"][0]  # the MLflow host check lets workers in
