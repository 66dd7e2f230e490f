"""Discrete-event simulator of a GLITCHES node (GPU prefill, FPGA decode, GPU assist).

Modules, one job each:
- model_shape: a transformer's shape -> parameter count, FLOPs, KV bytes
- profiles: device data (glitches/sim/profiles/*.json) -> timing + power + price
- measured: profiles measured on live workers (`glitches profile` output)
- kv_transfer: layer-by-layer KV streaming overlapped with prefill
- workload: arrival processes (all at once, Poisson, closed loop)
- node: the simpy model of one node; placement via scheduler.placement.place
- metrics: TTFT/TPOT/ITL/E2E percentiles, throughput, utilisation, efficiency
- cli: `simulate(...)` and a text renderer for the `glitches simulate` command
- sweep: device mixes under a budget and an SLO
"""
