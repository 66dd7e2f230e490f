"""Settings of one FPGA worker daemon, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from glitches.kv_plane import kv_copy_threads
from glitches.kv_plane.kv_stream_limits import check_limits
from glitches.services.runtime.errors import InvalidArgument
from glitches.services.cluster.kv_holds import DEFAULT_TTL_S as DEFAULT_HOLD_TTL_S
from glitches.services.runtime.settings import DaemonSettings

U280_HBM_BYTES = 8 * 1024**3  # 8 GiB of HBM2 on an Alveo U280
BACKENDS = ("emu", "xrt")
NUMERICS = ("reference", "w4a8", "csim")  # csim: the kernel source compiled with g++ (make setup)
KV_TRANSPORTS = ("auto", "shm", "nixl", "grpc")  # what --kv-transport accepts (gpu and fpga workers)


@dataclass(frozen=True)
class FpgaWorkerSettings(DaemonSettings):
    backend: str = "emu"  # "emu": software kernel emulator (no card); "xrt": an Alveo card through XRT's C API
    numerics: str = "reference"  # emu only: "reference" = the model's own precision; "w4a8" = the kernel's in Python;
    # "csim" = the kernel source C-simulated (same bits as "w4a8")
    hbm_bytes: int = U280_HBM_BYTES  # device memory for weights + KV, bytes
    slots: int = 1  # concurrent decode requests; 1 = the paper's batch size 1
    device: str = "0"  # card index or PCI BDF (xrt backend)
    xclbin: str = ""  # xrt backend: path of the decode bitstream (kernel glitches_decode)
    run_timeout_s: float = 10.0  # xrt backend: a kernel run longer than this is hung (card out of service), seconds
    kv_token_secret: bytes = field(default=b"", repr=False)  # shared with the scheduler; b"": KV unauthenticated
    kv_transport: str = "auto"  # KV data planes accepted besides grpc: auto = every one available here
    kv_header_timeout_s: float = 2.0  # a KV stream's header must arrive within this, seconds
    kv_stall_timeout_s: float = 30.0  # longest gap between two messages of one KV stream, seconds
    max_kv_streams: int = 64  # KV streams served at once; the gRPC pool gets this many threads on top of 32
    kv_hold_ttl_s: float = DEFAULT_HOLD_TTL_S  # KV of a request not decoding is freed this long after its last renewal
    kv_copy_threads: int = kv_copy_threads.DEFAULT_THREADS  # threads of one KV relayout (K and V side by side)
    kv_retention: bool = True  # keep finished requests' KV as reusable cache and serve DecodeFromHeld from it

    def __post_init__(self):
        super().__post_init__()
        if self.backend not in BACKENDS:
            raise InvalidArgument(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.numerics not in NUMERICS:
            raise InvalidArgument(f"--numerics must be one of {', '.join(NUMERICS)}, got {self.numerics!r}")
        if self.backend == "xrt" and not self.xclbin:
            raise InvalidArgument("--backend xrt needs --xclbin PATH (the decode bitstream)")
        if not self.run_timeout_s > 0:
            raise InvalidArgument(f"--run-timeout-s must be positive, got {self.run_timeout_s}")
        if self.hbm_bytes <= 0:
            raise InvalidArgument(f"--hbm-bytes must be positive, got {self.hbm_bytes}")
        if self.slots < 1:
            raise InvalidArgument(f"--slots must be at least 1, got {self.slots}")
        if self.kv_transport not in KV_TRANSPORTS:
            raise InvalidArgument(f"--kv-transport must be one of {', '.join(KV_TRANSPORTS)}, got {self.kv_transport!r}")
        check_limits(self.kv_header_timeout_s, self.kv_stall_timeout_s, self.max_kv_streams)
        kv_copy_threads.check(self.kv_copy_threads)
        if not 2.0 <= self.kv_hold_ttl_s <= 3600.0:
            raise InvalidArgument(f"--kv-hold-ttl-s must be in [2, 3600] s (renewals come every second), "
                                  f"got {self.kv_hold_ttl_s}")
