"""Apply a deployment plan through the Docker Engine API (the `docker` package; podman's
Docker-compatible service works too): replace any container of the same name, start one per
ContainerSpec on the host network, and remove them all again by their project label."""

from __future__ import annotations

import logging

from glitches.deploy.plan import ContainerSpec, Plan
from glitches.services.runtime.errors import Unavailable

log = logging.getLogger(__name__)
PROJECT_LABEL = "io.glitches.project"
ROLE_LABEL = "io.glitches.role"
DEVICE_LABEL = "io.glitches.device"


def connect(base_url: str = ""):
    """A Docker client from DOCKER_HOST (or base_url); Unavailable with the reason when none answers."""
    import docker

    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as error:
        raise Unavailable(f"no Docker Engine API answers ({error}); start dockerd, or podman's "
                          f"`podman system service` and set DOCKER_HOST=unix:///PATH/podman.sock") from error


def _run_kwargs(plan: Plan, spec: ContainerSpec) -> dict:
    import docker

    kwargs = dict(image=spec.image, command=spec.command, name=spec.name, detach=True, network_mode="host",
                  environment=spec.environment,
                  labels={PROJECT_LABEL: plan.project, ROLE_LABEL: spec.role, DEVICE_LABEL: spec.device},
                  restart_policy={"Name": "unless-stopped"})
    if spec.devices:
        kwargs["devices"] = spec.devices
    if spec.gpu_ids:
        kwargs["device_requests"] = [docker.types.DeviceRequest(driver="nvidia", device_ids=spec.gpu_ids,
                                                                capabilities=[["gpu"]])]
    if spec.volumes:
        kwargs["volumes"] = {host: {"bind": inside.removesuffix(":ro"), "mode": "ro" if inside.endswith(":ro") else "rw"}
                             for host, inside in spec.volumes.items()}
    return kwargs


def up(client, plan: Plan) -> list[str]:
    """Start every container of the plan (Redis and the scheduler first); returns their ids."""
    import docker

    ids = []
    for spec in plan.containers:
        try:
            client.containers.get(spec.name).remove(force=True)  # a re-deploy replaces, never duplicates
        except docker.errors.NotFound:
            pass
        container = client.containers.run(**_run_kwargs(plan, spec))
        log.info("started %s (%s) from %s", spec.name, spec.device or spec.role, spec.image)
        ids.append(container.id)
    return ids


def down(client, project: str) -> list[str]:
    """Stop and remove every container carrying the project's label; returns their names."""
    removed = []
    for container in client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"}):
        container.remove(force=True)
        removed.append(container.name)
    return removed
