"""The cluster files parse and hold what a user must not get wrong (auth, storage, GPUs, the salt)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
SALT_PATH = "/run/secrets/usvs-salt"


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def _check_cluster_spec(spec: dict, head_mounts: set[str] = frozenset()) -> None:
    head = spec["headGroupSpec"]
    workers = spec["workerGroupSpecs"]
    assert spec["rayVersion"].startswith("2.6")
    assert head["rayStartParams"]["num-gpus"] == "0"
    for template in [head["template"], *(w["template"] for w in workers)]:
        extra = head_mounts if template is head["template"] else set()
        for container in _containers(template):
            env = _env(container)
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "usvs-ray-auth"
            assert "MLFLOW_TRACKING_URI" in env and "NCCL_SOCKET_IFNAME" in env
            assert {m["mountPath"] for m in container["volumeMounts"]} == {"/shared", "/dev/shm", *extra}
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert (
            "persistentVolumeClaim" in volumes["shared"] and volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        )
    for group in workers:
        (container,) = _containers(group["template"])
        assert (
            container["resources"]["limits"]["nvidia.com/gpu"] == group["rayStartParams"]["num-gpus"] == "8"
        )
        assert "H100" in group["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]


def test_raycluster_manifest():
    doc = _load("raycluster.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(doc["spec"], head_mounts={SALT_PATH})
    _check_salt_secret(doc["spec"])


def _check_salt_secret(spec: dict) -> None:
    """The salt is a Secret volume mounted read-only as a file on the head, and nowhere else."""
    head = spec["headGroupSpec"]["template"]
    (mount,) = [m for c in _containers(head) for m in c["volumeMounts"] if m["mountPath"] == SALT_PATH]
    assert mount["readOnly"] is True
    volume = {v["name"]: v for v in head["spec"]["volumes"]}[mount["name"]]
    assert volume["secret"]["secretName"] == "usvs-salt" and volume["secret"]["defaultMode"] == 0o400
    assert mount["subPath"] in ("usvs-salt", volume["secret"].get("items", [{}])[0].get("path"))
    assert head["spec"]["securityContext"]["fsGroup"] == 100  # the ray user's group reads it
    for group in spec["workerGroupSpecs"]:
        template = group["template"]
        assert not any("secret" in v for v in template["spec"].get("volumes", []))
        assert all(m["mountPath"] != SALT_PATH for c in _containers(template) for m in c["volumeMounts"])


def _no_salt_in_env(doc: object) -> None:
    """No env var, runtime_env or entrypoint anywhere in a manifest carries the salt itself."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "env":
                assert not [e for e in value if "SALT" in e["name"].upper()], value
            if key in ("runtimeEnvYAML", "entrypoint") and isinstance(value, str):
                assert "USVS_SHARD_SALT" not in value and "env_vars" not in value.replace(" ", "")
            _no_salt_in_env(value)
    elif isinstance(doc, list):
        for item in doc:
            _no_salt_in_env(item)


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml", "shard-rayjob.yaml", "aws.yaml"])
def test_no_manifest_passes_the_salt_through_env_or_runtime_env(name):
    _no_salt_in_env(_load(name))
    assert "USVS_SHARD_SALT" not in (CLUSTER / name).read_text()


def test_shard_rayjob_reads_the_salt_from_the_mounted_secret():
    doc = _load("shard-rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    entry = doc["spec"]["entrypoint"]
    assert entry.startswith("python -m sharding build /shared/") and f"--salt-file {SALT_PATH}" in entry
    assert "--out /shared/" in entry and doc["spec"]["shutdownAfterJobFinishes"] is True
    spec = doc["spec"]["rayClusterSpec"]
    _check_salt_secret(spec)
    for template in [spec["headGroupSpec"]["template"], *(w["template"] for w in spec["workerGroupSpecs"])]:
        for container in _containers(template):
            env = _env(container)
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "usvs-ray-auth"
            assert "/shared" in {m["mountPath"] for m in container["volumeMounts"]}


def test_rayjob_manifest_runs_the_training_entry_on_shared_storage():
    doc = _load("rayjob.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    entry = doc["spec"]["entrypoint"]
    assert entry.startswith("python -m usvs_dist.train --config configs/")
    assert "train.storage_path=/shared/" in entry and "data.shards=/shared/" in entry
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    _check_cluster_spec(doc["spec"]["rayClusterSpec"])


def test_cluster_launcher_yaml():
    doc = _load("aws.yaml")
    assert doc["provider"]["type"] == "aws" and doc["head_node_type"] in doc["available_node_types"]
    assert doc["available_node_types"]["h100"]["node_config"]["InstanceType"] == "p5.48xlarge"
    assert all(
        "RAY_AUTH_MODE=token" in c
        for c in doc["head_start_ray_commands"] + doc["worker_start_ray_commands"]
        if "ray start" in c
    )
    assert "--shm-size=64g" in doc["docker"]["run_options"]
    # The salt: a head-only file of mode 0400 from a secret store, not an env var or a file_mount.
    (salt,) = [c for c in doc["head_setup_commands"] if "usvs-salt" in c]
    assert "umask 0377" in salt and "> ~/usvs-salt" in salt and "secretsmanager" in salt
    assert not any("salt" in c for c in doc["setup_commands"] + doc["worker_start_ray_commands"])
    assert not any("salt" in k or "salt" in v for k, v in doc["file_mounts"].items())


def test_slurm_script_starts_head_and_workers_then_submits():
    text = (CLUSTER / "slurm.sbatch").read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --nodes=" in text
    assert "ray start --head" in text and 'ray start --address="$head_ip:$port"' in text
    assert "export RAY_AUTH_MODE=token" in text
    assert "ray job submit" in text and "python -m usvs_dist.train" in text and "ray stop" in text


def test_slurm_sharding_script_passes_a_private_salt_file():
    text = (CLUSTER / "shard.sbatch").read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --nodes=1" in text
    assert '--salt-file "$SALT_FILE"' in text and "python -m sharding build" in text
    assert 'stat -c %a "$SALT_FILE"' in text and "!= 400" in text  # refuses a salt others can read
    assert "USVS_SHARD_SALT" not in text and "export" not in text


def test_runbook_gives_the_salt_as_a_file_never_in_a_runtime_env():
    text = (CLUSTER / "README.md").read_text()
    assert f"--salt-file {SALT_PATH}" in text
    for line in text.splitlines():
        if "runtime-env" in line or "runtime_env" in line or "env_vars" in line:
            assert "SALT" not in line.upper(), line


def test_the_image_has_every_package_ffmpeg_and_torchcodec_for_nvdec():
    import re
    import tomllib

    dockerfile = (CLUSTER / "Dockerfile").read_text()
    pyproject = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert re.search(rf"^COPY .* {package} {package}$", dockerfile, re.M), package
    assert re.search(r"apt-get install .*\bffmpeg\b", dockerfile)
    extras = re.search(r'pip install .*"\.\[([a-z0-9,]+)\]" -c constraints.txt', dockerfile).group(1)
    assert {"gpu", "torchcodec"} <= set(extras.split(","))
    # NVDEC needs the driver's video capability in the container (libnvcuvid).
    assert re.search(r"NVIDIA_DRIVER_CAPABILITIES=\S*video", dockerfile)
    runbook = (CLUSTER / "README.md").read_text()
    assert "nvidia-smi -q | grep -i dec" in runbook and "usvs.decoder" in runbook
