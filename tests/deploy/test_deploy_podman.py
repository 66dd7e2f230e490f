"""glitches deploy against a real Docker Engine API: podman's Docker-compatible service.

Starts `podman system service` on a private socket, builds a stand-in daemon image FROM a local base
image (no image can be pulled here; make one with debootstrap and `podman import`, see README "Deploy"),
deploys a CPU plan on the host network, checks the containers (named by device, labelled, running, with
their env), and removes them. Skips with the reason when podman or the base image is missing.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time

import pytest

BASE_IMAGE = os.environ.get("GLITCHES_TEST_BASE_IMAGE", "localhost/debian-bookworm-python:base")
TEST_IMAGE = "localhost/glitches-deploy-test:latest"
STAND_IN = f"""FROM {BASE_IMAGE}
RUN printf '#!/bin/sh\\necho "glitches $*"\\nexec sleep 600\\n' > /usr/local/bin/glitches && chmod +x /usr/local/bin/glitches
ENTRYPOINT ["/usr/local/bin/glitches"]
"""


@pytest.fixture(scope="module")
def podman_client(tmp_path_factory):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install -y podman runc)")
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE]).returncode != 0:
        pytest.skip(f"no local base image {BASE_IMAGE}: images cannot be pulled here; debootstrap one and "
                    f"`podman import` it (README, Deploy)")
    import docker

    work = tmp_path_factory.mktemp("podman")
    conf = work / "containers.conf"
    conf.write_text('[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\n')
    socket = work / "podman.sock"
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    service = subprocess.Popen(["podman", "--runtime", "runc", "system", "service", "--time=0", f"unix://{socket}"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not socket.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    client = docker.DockerClient(base_url=f"unix://{socket}", timeout=120)
    try:
        client.ping()
        client.images.build(fileobj=io.BytesIO(STAND_IN.encode()), tag=TEST_IMAGE, rm=True)
        yield client, f"unix://{socket}"
    finally:
        client.close()
        service.terminate()
        service.wait(timeout=30)


def test_deploy_starts_one_container_per_device_and_down_removes_them(podman_client, tmp_path):
    from glitches.deploy import engine
    from glitches.deploy.plan import DeployOptions, make_plan

    client, _ = podman_client
    project = f"glitches-test-{os.getpid()}"
    options = DeployOptions(project=project, image_override=TEST_IMAGE, cache_dir=str(tmp_path),
                            redis_url="redis://127.0.0.1:6379/0", cpu_gpu_workers=1, emulated_fpgas=2,
                            grpc_base_port=51051, http_base_port=18080)
    plan = make_plan([], [], options)
    try:
        engine.up(client, plan)
        engine.up(client, plan)  # a re-deploy replaces the containers instead of failing on the names
        running = client.containers.list(filters={"label": f"{engine.PROJECT_LABEL}={project}"})
        by_name = {c.name: c for c in running}
        assert set(by_name) == {f"{project}-scheduler", f"{project}-cpu-prefill0", f"{project}-fpga-emu0",
                                f"{project}-fpga-emu1"}
        emu1 = by_name[f"{project}-fpga-emu1"]
        emu1.reload()
        assert emu1.status == "running"
        assert emu1.labels[engine.ROLE_LABEL] == "fpga-worker" and emu1.labels[engine.DEVICE_LABEL] == "emu"
        env = dict(item.split("=", 1) for item in emu1.attrs["Config"]["Env"])
        assert env["GLITCHES_PORT"] == "51252" and env["GLITCHES_HTTP_PORT"] == "18281"
        assert emu1.attrs["HostConfig"]["NetworkMode"] == "host"
        deadline = time.monotonic() + 10
        while b"fpga-worker --worker-id fpga-emu1" not in emu1.logs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert b"glitches fpga-worker --worker-id fpga-emu1 --backend emu" in emu1.logs()
    finally:
        removed = engine.down(client, project)
    assert len(removed) == 4
    assert client.containers.list(all=True, filters={"label": f"{engine.PROJECT_LABEL}={project}"}) == []
