"""glitches deploy: device discovery on a fake sysfs tree, the plan, and `--dry-run --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from glitches.deploy.devices import AlveoCard, Gpu, discover_alveo
from glitches.deploy.plan import DeployOptions, make_plan
from glitches.services.runtime.errors import InvalidArgument


def _pci_function(sys_root, bdf, vendor, device, render=None):
    function = sys_root / "bus" / "pci" / "devices" / bdf
    function.mkdir(parents=True)
    (function / "vendor").write_text(vendor + "\n")
    (function / "device").write_text(device + "\n")
    if render:
        (function / "drm" / render).mkdir(parents=True)


def test_alveo_cards_are_found_by_vendor_with_render_and_mgmt_nodes(tmp_path):
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    _pci_function(sys_root, "0000:3b:00.0", "0x10ee", "0x500c")  # U280 management function
    _pci_function(sys_root, "0000:3b:00.1", "0x10ee", "0x500d", "renderD128")  # user function
    _pci_function(sys_root, "0000:d8:00.1", "0x10ee", "0x500d", "renderD129")  # second card, no mgmt node
    _pci_function(sys_root, "0000:65:00.0", "0x10de", "0x2330", "renderD130")  # an NVIDIA GPU: not Alveo
    dev_root.mkdir()
    (dev_root / f"xclmgmt{0x3b << 8}").touch()
    cards = discover_alveo(sys_root, dev_root)
    assert cards == [
        AlveoCard("0000:3b:00.1", str(dev_root / "dri" / "renderD128"), str(dev_root / "xclmgmt15104"), "0x500d"),
        AlveoCard("0000:d8:00.1", str(dev_root / "dri" / "renderD129"), "", "0x500d")]


def test_no_sysfs_means_no_cards(tmp_path):
    assert discover_alveo(tmp_path / "nothing", tmp_path) == []


def test_plan_has_one_container_per_device_named_by_device():
    gpus = [Gpu(0, "NVIDIA H100", "GPU-a"), Gpu(1, "NVIDIA H100", "GPU-b")]
    cards = [AlveoCard("0000:3b:00.1", "/dev/dri/renderD128", "/dev/xclmgmt15104", "0x500d")]
    plan = make_plan(gpus, cards, DeployOptions(xclbin="/opt/bitstreams/decode.xclbin"))
    by_name = {c.name: c for c in plan.containers}
    assert list(by_name) == ["glitches-redis", "glitches-scheduler", "glitches-gpu0", "glitches-gpu1",
                             "glitches-fpga-0000-3b-00-1"]
    assert by_name["glitches-gpu1"].gpu_ids == ["1"] and by_name["glitches-gpu1"].image == "glitches-gpu-worker:latest"
    fpga = by_name["glitches-fpga-0000-3b-00-1"]
    assert fpga.devices == ["/dev/dri/renderD128:/dev/dri/renderD128:rwm", "/dev/xclmgmt15104:/dev/xclmgmt15104:rwm"]
    ports = [(c.grpc_port, c.http_port) for c in plan.containers if c.role != "redis"]
    assert len({p for pair in ports for p in pair}) == 2 * len(ports)  # host network: no port is shared
    assert all(c.environment["GLITCHES_REDIS_URL"] == "redis://127.0.0.1:6379/0"
               for c in plan.containers if c.role != "redis")


def test_detected_cards_run_the_xrt_backend_unless_emu_is_asked_for():
    gpus = [Gpu(0, "NVIDIA H100", "GPU-a")]
    cards = [AlveoCard("0000:3b:00.1", "/dev/dri/renderD128", "", "0x500d")]
    with pytest.raises(InvalidArgument, match="--xclbin PATH.*--fpga-backend emu"):
        make_plan(gpus, cards, DeployOptions())
    (fpga,) = [c for c in make_plan(gpus, cards, DeployOptions(xclbin="/bits/decode.xclbin")).containers
               if c.role == "fpga-worker"]
    assert fpga.command == ["fpga-worker", "--worker-id", "fpga-0000-3b-00-1", "--device", "0000:3b:00.1",
                            "--backend", "xrt", "--xclbin", "/etc/glitches/decode.xclbin"]
    assert fpga.volumes["/bits/decode.xclbin"] == "/etc/glitches/decode.xclbin:ro"
    assert fpga.environment["XILINX_XRT"] == "/opt/xilinx/xrt" and fpga.image == "glitches-fpga-worker:latest"
    (emulated,) = [c for c in make_plan(gpus, cards, DeployOptions(fpga_backend="emu")).containers
                   if c.role == "fpga-worker"]
    assert emulated.command[-2:] == ["--backend", "emu"] and "XILINX_XRT" not in emulated.environment
    with pytest.raises(InvalidArgument, match="--fpga-backend must be one of xrt, emu"):
        DeployOptions(fpga_backend="hls")


def test_plan_without_devices_needs_cpu_workers():
    with pytest.raises(InvalidArgument, match="--cpu-gpu-workers"):
        make_plan([], [], DeployOptions())
    plan = make_plan([], [], DeployOptions(cpu_gpu_workers=1, emulated_fpgas=2, redis_url="redis://r:1/0"))
    assert [c.name for c in plan.containers] == ["glitches-scheduler", "glitches-cpu-prefill0", "glitches-fpga-emu0",
                                                 "glitches-fpga-emu1"]
    assert all(c.image == "glitches-cpu:latest" for c in plan.containers[1:])


def test_dry_run_json_prints_the_plan():
    run = subprocess.run([sys.executable, "-m", "glitches", "deploy", "--dry-run", "--json", "--cpu-gpu-workers", "1",
                          "--emulated-fpgas", "1"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    plan = json.loads(run.stdout)
    roles = [c["role"] for c in plan["containers"]]
    assert roles.count("redis") == 1 and roles.count("scheduler") == 1 and "fpga-worker" in roles
    assert plan["scheduler_address"] == "127.0.0.1:50051"


def test_tls_dir_is_mounted_read_only_and_each_daemon_gets_its_role_certificate(tmp_path):
    from glitches.certs import make_certs

    make_certs(tmp_path)
    command = [sys.executable, "-m", "glitches", "deploy", "--dry-run", "--json", "--cpu-gpu-workers", "1",
               "--emulated-fpgas", "1", "--tls-dir", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "cannot read" in run.stderr and "chown 10001" in run.stderr  # keys: root, 0600
    for key in tmp_path.glob("*-key.pem"):
        os.chown(key, 10001, -1) if os.geteuid() == 0 else key.chmod(0o644)
    run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    daemons = [c for c in json.loads(run.stdout)["containers"] if c["role"] != "redis"]
    assert len(daemons) == 3
    for container in daemons:
        assert container["volumes"][str(tmp_path)] == "/etc/glitches/tls:ro"
        env = container["environment"]
        assert env["GLITCHES_TLS_CERT"] == f"/etc/glitches/tls/{container['role']}.pem"
        assert env["GLITCHES_TLS_CA"] == "/etc/glitches/tls/ca.pem"
    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run([sys.executable, "-m", "glitches", "deploy", "--dry-run", "--tls-dir", str(empty),
                          "--cpu-gpu-workers", "1"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "lacks ca.pem" in run.stderr


def test_scheduler_and_fpga_workers_get_one_kv_token_secret_that_the_printed_plan_hides():
    from glitches.services.auth.kv_token import SECRET_ENV

    plan = make_plan([], [], DeployOptions(cpu_gpu_workers=1, emulated_fpgas=2, kv_token_secret="s" * 64))
    by_role = {}
    for container in plan.containers:
        by_role.setdefault(container.role, []).append(container.environment.get(SECRET_ENV))
    assert by_role["scheduler"] == ["s" * 64] and by_role["fpga-worker"] == ["s" * 64] * 2
    # GPU workers check the per-request authorisation of Prefill/Decode/Release (glitches/services/auth/request_auth.py)
    assert by_role["gpu-worker"] == ["s" * 64] and by_role["redis"] == [None]
    assert "s" * 64 not in json.dumps(plan.to_dict())
    run = subprocess.run([sys.executable, "-m", "glitches", "deploy", "--dry-run", "--json", "--cpu-gpu-workers", "1",
                          "--emulated-fpgas", "1"], capture_output=True, text=True, timeout=60)
    shown = {c["role"]: c["environment"].get(SECRET_ENV) for c in json.loads(run.stdout)["containers"]}
    assert shown["scheduler"] == "<hidden>" and shown["fpga-worker"] == "<hidden>"


def test_decode_gpus_give_the_last_gpu_workers_the_decode_role():
    gpus = [Gpu(i, "NVIDIA H100", f"GPU-{i}") for i in range(4)]
    plan = make_plan(gpus, [], DeployOptions(decode_gpus=2, redis_url="redis://r:1/0"))
    args = {c.name: c.command for c in plan.containers if c.role == "gpu-worker"}
    assert [name for name, cmd in args.items() if "--roles" in cmd] == ["glitches-gpu2", "glitches-gpu3"]
    assert args["glitches-gpu3"][-2:] == ["--roles", "decode"]
    cpu = make_plan([], [], DeployOptions(cpu_gpu_workers=2, decode_gpus=1, redis_url="redis://r:1/0"))
    names = [c.name for c in cpu.containers if c.role == "gpu-worker"]
    assert names == ["glitches-cpu-prefill0", "glitches-cpu-decode1"]
    with pytest.raises(InvalidArgument, match="prefill role"):
        make_plan(gpus, [], DeployOptions(decode_gpus=4, redis_url="redis://r:1/0"))
