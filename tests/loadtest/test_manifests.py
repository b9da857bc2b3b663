"""The in-cluster Locust manifests: what `opsctl render locust` prints."""

from __future__ import annotations

import base64
import sys

import yaml

from opsctl.config import load_project
from opsctl.loadtest import profiles
from opsctl.loadtest.manifests import render_locust
from opsctl.loadtest.runner import import_locust


def test_master_and_workers_run_the_profile(ops_root, tmp_path):
    project = load_project(ops_root)
    text = render_locust(project, project.env("local"), profile="medium", workers=3)
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text)}
    assert set(docs) == {("ConfigMap", "locust-files"), ("ConfigMap", "locust-audio"), ("Service", "locust-master"),
                         ("Job", "locust-master"), ("Deployment", "locust-worker")}
    medium = profiles.get(project, "medium")
    args = docs[("Job", "locust-master")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--expect-workers") + 1] == "3" and args[args.index("-u") + 1] == str(medium.users)
    assert args[args.index("-t") + 1] == "600s" and "--headless" in args and args[-2:] == list(medium.classes)
    assert docs[("Deployment", "locust-worker")]["spec"]["replicas"] == 3
    assert "--worker" in docs[("Deployment", "locust-worker")]["spec"]["template"]["spec"]["containers"][0]["args"]

    # the ConfigMap's files are a working locustfile set: Locust loads them with the profile's weights
    for name, code in docs[("ConfigMap", "locust-files")]["data"].items():
        (tmp_path / name).write_text(code)
    for name, data in docs[("ConfigMap", "locust-audio")]["binaryData"].items():
        (tmp_path / name).write_bytes(base64.b64decode(data))
    import_locust()
    from locust.util.load_locustfile import load_locustfile

    try:
        classes, _ = load_locustfile(str(tmp_path / "profile.py"))
    finally:  # these sibling modules came from tmp_path: do not leave them to later runs
        for name in ("profile", "common", "admin", "stress", "transcription", "locustfile"):
            sys.modules.pop(name, None)
    assert {n: c.weight for n, c in classes.items() if n in medium.classes} == medium.classes
    assert len(yaml.safe_dump(docs[("ConfigMap", "locust-audio")]).encode()) < 1024 * 1024  # Kubernetes' cap


def test_users_in_the_cluster_send_the_api_key_from_a_secret(tmp_path):
    (tmp_path / "opsctl.yaml").write_text(
        "environments:\n  staging: {platform: kubernetes}\n  lab: {platform: kubernetes, worker: {auth: none}}\n")
    project = load_project(tmp_path)
    for env, wanted in (("staging", True), ("lab", False)):
        text = render_locust(project, project.env(env), workers=2)
        docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(text)}
        (worker,) = docs[("Deployment", "locust-worker")]["spec"]["template"]["spec"]["containers"]
        keyed = [e for e in worker["env"] if e["name"] == "LOADTEST_API_KEY"]
        assert bool(keyed) == wanted, env
        if wanted:
            assert keyed == [{"name": "LOADTEST_API_KEY", "valueFrom": {"secretKeyRef": {
                "name": "locust-api-key", "key": "api-key"}}}]
            assert "create secret generic locust-api-key" in text.splitlines()[2]
