"""docker-compose.yml and docker-compose.cpu.yml: every service has a health check, every depends_on waits for
service_healthy, devices are reserved per worker; and `podman-compose config` accepts both where it is
installed. Also checks the Dockerfile's targets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FILES = ("docker-compose.yml", "docker-compose.cpu.yml")


def _services(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())["services"]


def _compose_cli() -> str:
    """podman-compose's path; skips the test with the reason when it or the podman binary it drives is absent
    (`.ci/run` installs podman from Debian's packages as root; a developer without it still runs the YAML checks)."""
    cli = shutil.which("podman-compose") or shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("podman-compose is not installed (pip install podman-compose); the YAML checks still ran")
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install -y podman runc); the YAML checks still ran")
    return cli


@pytest.mark.parametrize("name", FILES)
def test_every_service_is_health_checked_and_waits_for_healthy_dependencies(name):
    services = _services(name)
    assert {"redis", "scheduler"} <= set(services)
    for service_name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{service_name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{service_name} depends on unknown {dependency}"
            assert condition == {"condition": "service_healthy"}, f"{service_name} -> {dependency}: {condition}"
        if service_name != "redis":
            assert "redis" in service["depends_on"]
            env = service["environment"]
            assert env["GLITCHES_REDIS_URL"] == "redis://:${GLITCHES_REDIS_PASSWORD:-}@redis:6379/0" and env["GLITCHES_ADVERTISE_HOST"] == service_name
            assert "/readyz" in " ".join(service["healthcheck"]["test"])


def test_real_hardware_topology_reserves_one_device_per_worker():
    services = _services("docker-compose.yml")
    gpus = {n: s for n, s in services.items() if n.startswith("gpu-worker-")}
    fpgas = {n: s for n, s in services.items() if n.startswith("fpga-worker-")}
    assert gpus and fpgas
    for n, s in gpus.items():
        (device,) = s["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["device_ids"] == [n.rsplit("-", 1)[1]]
        assert "gpu" in device["capabilities"]
    for s in fpgas.values():
        nodes = s["devices"]  # "HOST:CONTAINER", with ${VAR:-default} host paths
        assert any("/dev/dri/renderD" in n for n in nodes) and any("/dev/xclmgmt" in n for n in nodes)
        assert s["build"]["target"] == "fpga-worker" and "XRT_RELEASE" in s["build"]["args"]


def test_cpu_topology_emulates_the_fpgas_without_devices():
    services = _services("docker-compose.cpu.yml")
    fpgas = [s for n, s in services.items() if n.startswith("fpga-worker-")]
    assert len(fpgas) >= 2 and all("emu" in s["command"] for s in fpgas)
    assert not any("devices" in s or "deploy" in s for s in services.values())


@pytest.mark.parametrize("name", FILES)
def test_compose_cli_accepts_the_file(name, tmp_path):
    cli = _compose_cli()
    run = subprocess.run([cli, "-f", str(ROOT / name), "config"], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert set(yaml.safe_load(run.stdout)["services"]) == set(_services(name))


def test_dockerfile_has_every_target_and_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    targets = re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE)
    assert {"cpu", "scheduler", "gpu-worker", "fpga-worker"} <= set(targets)
    assert "ARG XRT_RELEASE" in text and "ARG BAKE_MODEL" in text
    finals = re.split(r"^FROM ", text, flags=re.MULTILINE)
    for stage in finals:
        name = stage.split("\n", 1)[0]
        if name.endswith((" AS cpu", " AS gpu-worker", " AS fpga-worker")):
            assert "USER glitches" in stage and "HEALTHCHECK" in stage and "/readyz" in stage
            assert "build-essential" not in stage and "gcc" not in stage


def test_hostnet_override_runs_everything_on_the_host_network_with_its_own_redis(tmp_path):
    """docker-compose.hostnet.yml over docker-compose.cpu.yml, as scripts/container/smoke.sh merges them."""
    cli = _compose_cli()
    ports = {"GLITCHES_HOSTNET_REDIS_PORT": "16380", "GLITCHES_HOSTNET_PORT": "15051",
             "GLITCHES_HOSTNET_HTTP_SCHEDULER": "18090", "GLITCHES_HOSTNET_HTTP_GPU0": "18091",
             "GLITCHES_HOSTNET_HTTP_FPGA0": "18092", "GLITCHES_HOSTNET_HTTP_FPGA1": "18093"}
    run = subprocess.run([cli, "-f", str(ROOT / "docker-compose.cpu.yml"), "-f", str(ROOT / "docker-compose.hostnet.yml"),
                          "config"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**os.environ, **ports})
    assert run.returncode == 0, run.stderr[-2000:]
    services = yaml.safe_load(run.stdout)["services"]
    assert set(services) == set(_services("docker-compose.cpu.yml"))
    http_ports = set()
    for name, service in services.items():
        assert service["network_mode"] == "host" and not service.get("ports"), name
        test = service["healthcheck"]["test"]
        assert test.count("CMD") == 1, f"{name}: merged health check {test}"  # replaced, not appended
        if name == "redis":
            assert service["image"].startswith("glitches-cpu:") and "16380" in service["command"]
            assert service["environment"]["REDIS_PORT"] == "16380" and "REDIS_PORT" in test[-1]
            continue
        env = service["environment"]
        assert env["GLITCHES_REDIS_URL"] == "redis://127.0.0.1:16380/0"
        assert env["GLITCHES_HOST"] == env["GLITCHES_ADVERTISE_HOST"] == "127.0.0.1"
        assert env["GLITCHES_PORT"] == ("15051" if name == "scheduler" else "0")
        http_ports.add(env["GLITCHES_HTTP_PORT"])
        assert "GLITCHES_HTTP_PORT" in test[-1]  # the check follows the moved port
    assert http_ports == {"18090", "18091", "18092", "18093"}


def test_tls_override_gives_each_daemon_its_role_certificate(tmp_path):
    """docker-compose.tls.yml over the CPU topology on the host network, as the smoke test's TLS run merges them."""
    cli = _compose_cli()
    files = ["docker-compose.cpu.yml", "docker-compose.hostnet.yml", "docker-compose.tls.yml"]
    run = subprocess.run([cli, *(a for f in files for a in ("-f", str(ROOT / f))), "config"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, env={**os.environ, "GLITCHES_TLS_DIR": "/srv/certs"})
    assert run.returncode == 0, run.stderr[-2000:]
    services = yaml.safe_load(run.stdout)["services"]
    roles = {"scheduler": "scheduler", "gpu-worker-0": "gpu-worker", "fpga-worker-0": "fpga-worker",
             "fpga-worker-1": "fpga-worker"}
    for name, role in roles.items():
        env = services[name]["environment"]
        assert env["GLITCHES_TLS_CERT"] == f"/etc/glitches/tls/{role}.pem", name
        assert env["GLITCHES_TLS_KEY"] == f"/etc/glitches/tls/{role}-key.pem" and env["GLITCHES_TLS_CA"]
        assert "/srv/certs:/etc/glitches/tls:ro" in services[name]["volumes"], services[name]["volumes"]
        assert env["GLITCHES_REDIS_URL"].startswith("redis://127.0.0.1:")  # the other overrides still apply
    assert "GLITCHES_TLS_CERT" not in services["redis"].get("environment", {})
