"""The deployment plan: which containers run on this node (a pure function of the devices found and the
options), printed by `glitches deploy --dry-run --json` and applied by glitches.deploy.engine.

Every container uses the host network (no port mapping, daemons reach each other on the node's
address), so each daemon gets its own gRPC and HTTP ports: scheduler BASE, GPU worker i BASE+100+i,
FPGA worker j BASE+200+j (and the HTTP side ports likewise from HTTP_BASE).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from glitches.deploy.devices import AlveoCard, Gpu
from glitches.services.runtime.errors import InvalidArgument
from glitches.services.auth.kv_token import SECRET_ENV

TLS_MOUNT = "/etc/glitches/tls"  # where --tls-dir appears inside every daemon container
XCLBIN_MOUNT = "/etc/glitches/decode.xclbin"  # where --xclbin appears inside each xrt FPGA worker container
FPGA_BACKENDS = ("xrt", "emu")  # --fpga-backend: what runs a detected Alveo card (fpga_worker.settings.BACKENDS)


@dataclass(frozen=True)
class DeployOptions:
    project: str = "glitches"  # container names start with it; a label marks them for `--down`
    image_prefix: str = "glitches"  # images {prefix}-scheduler, -gpu-worker, -fpga-worker, -cpu
    tag: str = "latest"
    model: str = "smollm2-135m-instruct"
    cache_dir: str = "/var/cache/glitches"  # host directory mounted as GLITCHES_CACHE_DIR
    redis_url: str = ""  # empty: run a Redis container on redis_port
    redis_image: str = "redis:7.4-alpine"
    redis_port: int = 6379
    redis_prefix: str = "glitches"
    grpc_base_port: int = 50051
    http_base_port: int = 8080
    advertise_host: str = "127.0.0.1"  # how daemons on this node reach each other (host network)
    emulated_fpgas: int = 0  # add this many emulated FPGA workers (cpu image) when no card is found
    cpu_gpu_workers: int = 0  # add this many CPU prefill workers (cpu image) when no GPU is found
    decode_gpus: int = 0  # the last N GPU workers run --roles decode: decode targets for the others' prefills
    image_override: str = ""  # run every daemon from this one image (e.g. the cpu image, or in tests)
    fpga_backend: str = "xrt"  # detected Alveo cards: "xrt" drives them; "emu" runs the emulator in their place
    xclbin: str = ""  # host path of the decode bitstream, mounted read-only into each xrt FPGA worker
    xilinx_xrt: str = "/opt/xilinx/xrt"  # where XRT lives inside the fpga-worker image (its XILINX_XRT)
    tls_dir: str = ""  # host directory from `glitches certs`: mounted read-only, mTLS on every gRPC link
    kv_token_secret: str = field(default="", repr=False)  # shared by the scheduler and FPGA workers; "": none

    def __post_init__(self):
        if self.emulated_fpgas < 0 or self.cpu_gpu_workers < 0 or self.decode_gpus < 0:
            raise InvalidArgument("--emulated-fpgas, --cpu-gpu-workers and --decode-gpus must be >= 0")
        if self.fpga_backend not in FPGA_BACKENDS:
            raise InvalidArgument(f"--fpga-backend must be one of {', '.join(FPGA_BACKENDS)}, "
                                  f"got {self.fpga_backend!r}")


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    role: str  # redis, scheduler, gpu-worker, fpga-worker
    device: str  # what it drives: "gpu0", "fpga 0000:3b:00.1", "emu", "" (none)
    image: str
    command: list[str]
    environment: dict[str, str] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)  # "HOST:CONTAINER:rwm"
    gpu_ids: list[str] = field(default_factory=list)  # NVIDIA device request
    volumes: dict[str, str] = field(default_factory=dict)  # host path -> container path (":ro" read-only)
    http_port: int = 0  # 0: no HTTP side port (redis)
    grpc_port: int = 0


@dataclass(frozen=True)
class Plan:
    project: str
    gpus: list[dict]
    fpgas: list[dict]
    redis_url: str
    scheduler_address: str
    containers: list[ContainerSpec]

    def to_dict(self) -> dict:
        """The plan as JSON-ready data, the KV token secret masked."""
        data = asdict(self)
        for container in data["containers"]:
            if SECRET_ENV in container["environment"]:
                container["environment"][SECRET_ENV] = "<hidden>"
        return data


def _image(options: DeployOptions, role: str) -> str:
    return options.image_override or f"{options.image_prefix}-{role}:{options.tag}"


def make_plan(gpus: list[Gpu], cards: list[AlveoCard], options: DeployOptions) -> Plan:
    o = options
    containers: list[ContainerSpec] = []
    redis_url = o.redis_url or f"redis://{o.advertise_host}:{o.redis_port}/0"
    if not o.redis_url:
        containers.append(ContainerSpec(f"{o.project}-redis", "redis", "", o.redis_image,
                                        ["redis-server", "--port", str(o.redis_port), "--save", "",
                                         "--appendonly", "no"], grpc_port=o.redis_port))
    if not gpus and not o.cpu_gpu_workers:
        raise InvalidArgument("no NVIDIA GPU found (NVML) and --cpu-gpu-workers is 0: prefill needs a GPU worker; "
                              "pass --cpu-gpu-workers 1 to prefill on the CPU")

    def daemon(name, role, device, image, grpc_port, http_port, args, more_env=None, more_volumes=None,
               **extra) -> ContainerSpec:
        env = {"GLITCHES_REDIS_URL": redis_url, "GLITCHES_REDIS_PREFIX": o.redis_prefix, "GLITCHES_MODEL": o.model,
               "GLITCHES_HOST": "0.0.0.0", "GLITCHES_ADVERTISE_HOST": o.advertise_host,
               "GLITCHES_PORT": str(grpc_port), "GLITCHES_HTTP_PORT": str(http_port),
               "GLITCHES_CACHE_DIR": "/var/cache/glitches"}
        if o.kv_token_secret:  # KV tokens (FPGA workers) and per-request auth of worker RPCs (every worker)
            env[SECRET_ENV] = o.kv_token_secret
        volumes = {o.cache_dir: "/var/cache/glitches"}
        if o.tls_dir:  # each daemon presents its role's certificate (ROLE.pem / ROLE-key.pem)
            volumes[o.tls_dir] = f"{TLS_MOUNT}:ro"
            env.update(GLITCHES_TLS_CA=f"{TLS_MOUNT}/ca.pem", GLITCHES_TLS_CERT=f"{TLS_MOUNT}/{role}.pem",
                       GLITCHES_TLS_KEY=f"{TLS_MOUNT}/{role}-key.pem")
        env.update(more_env or {})
        volumes.update(more_volumes or {})
        return ContainerSpec(f"{o.project}-{name}", role, device, image, [role, *args], env,
                             volumes=volumes, http_port=http_port, grpc_port=grpc_port, **extra)

    gpu_workers = len(gpus) or o.cpu_gpu_workers
    if o.decode_gpus >= gpu_workers:
        raise InvalidArgument(f"--decode-gpus {o.decode_gpus}: {gpu_workers} GPU worker(s) on this node, and at least "
                              "one must keep the prefill role")

    def roles(i: int) -> list[str]:  # the last decode_gpus GPU workers take KV from the others' prefills
        return ["--roles", "decode"] if i >= gpu_workers - o.decode_gpus else []

    containers.append(daemon("scheduler", "scheduler", "", _image(o, "scheduler"), o.grpc_base_port,
                             o.http_base_port, []))
    for i, gpu in enumerate(gpus):
        containers.append(daemon(f"gpu{gpu.index}", "gpu-worker", f"gpu{gpu.index} {gpu.name}",
                                 _image(o, "gpu-worker"), o.grpc_base_port + 100 + i, o.http_base_port + 100 + i,
                                 ["--worker-id", f"gpu{gpu.index}", "--device", "cuda", *roles(i)],
                                 gpu_ids=[str(gpu.index)]))
    for i in range(0 if gpus else o.cpu_gpu_workers):
        name = f"cpu-decode{i}" if roles(i) else f"cpu-prefill{i}"
        containers.append(daemon(name, "gpu-worker", "cpu", _image(o, "cpu"),
                                 o.grpc_base_port + 100 + i, o.http_base_port + 100 + i,
                                 ["--worker-id", name, "--device", "cpu", *roles(i)]))
    if cards and o.fpga_backend == "xrt" and not o.xclbin:
        raise InvalidArgument(f"{len(cards)} Alveo card(s) found: give --xclbin PATH (the decode bitstream) to "
                              "drive them with the xrt backend, or --fpga-backend emu to emulate them instead")
    for j, card in enumerate(cards):
        slug = card.bdf.replace(":", "-").replace(".", "-")
        nodes = [n for n in (card.render_node, card.mgmt_node) if n]
        xrt = o.fpga_backend == "xrt"
        containers.append(daemon(f"fpga-{slug}", "fpga-worker", f"fpga {card.bdf}", _image(o, "fpga-worker"),
                                 o.grpc_base_port + 200 + j, o.http_base_port + 200 + j,
                                 ["--worker-id", f"fpga-{slug}", "--device", card.bdf, "--backend", o.fpga_backend,
                                  *(["--xclbin", XCLBIN_MOUNT] if xrt else [])],
                                 more_env={"XILINX_XRT": o.xilinx_xrt} if xrt else None,
                                 more_volumes={o.xclbin: f"{XCLBIN_MOUNT}:ro"} if xrt else None,
                                 devices=[f"{n}:{n}:rwm" for n in nodes]))
    for j in range(0 if cards else o.emulated_fpgas):
        containers.append(daemon(f"fpga-emu{j}", "fpga-worker", "emu", _image(o, "cpu"),
                                 o.grpc_base_port + 200 + j, o.http_base_port + 200 + j,
                                 ["--worker-id", f"fpga-emu{j}", "--backend", "emu", "--threads", "1"]))
    return Plan(o.project, [asdict(g) for g in gpus], [asdict(c) for c in cards], redis_url,
                f"{o.advertise_host}:{o.grpc_base_port}", containers)
