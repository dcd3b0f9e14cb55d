"""The cluster files parse and hold what a user must not get wrong (auth, storage, GPUs)."""

from __future__ import annotations

from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def _check_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    workers = spec["workerGroupSpecs"]
    assert spec["rayVersion"].startswith("2.6")
    assert head["rayStartParams"]["num-gpus"] == "0"
    for template in [head["template"], *(w["template"] for w in workers)]:
        for container in _containers(template):
            env = _env(container)
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "usvs-ray-auth"
            assert "MLFLOW_TRACKING_URI" in env and "NCCL_SOCKET_IFNAME" in env
            assert {m["mountPath"] for m in container["volumeMounts"]} == {"/shared", "/dev/shm"}
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
    _check_cluster_spec(doc["spec"])


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


def test_slurm_script_starts_head_and_workers_then_submits():
    text = (CLUSTER / "slurm.sbatch").read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --nodes=" in text
    assert "ray start --head" in text and 'ray start --address="$head_ip:$port"' in text
    assert "export RAY_AUTH_MODE=token" in text
    assert "ray job submit" in text and "python -m usvs_dist.train" in text and "ray stop" in text
