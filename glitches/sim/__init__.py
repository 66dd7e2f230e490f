"""Discrete-event simulator of a GLITCHES node (GPU prefill, FPGA decode, GPU assist, decode-role GPUs).

Modules, one job each:
- model_shape: a transformer's shape -> parameter count, FLOPs, KV bytes
- profiles: device data (glitches/sim/profiles/*.json) -> timing + power + price
- measured: profiles measured on live workers (`glitches profile` output)
- kv_transfer: layer-by-layer KV streaming overlapped with prefill
- workload: arrival processes (all at once, Poisson, closed loop)
- node: the simpy model of one node; placement via scheduler.placement.place
- gpu_batching: a GPU's continuous batching loop (decode rows + prefill chunks per pass)
- decode_gpu: decode-role GPUs (KV from a prefill GPU over its link, batched decodes, slots and KV budget)
- metrics: TTFT/TPOT/ITL/E2E percentiles, throughput, utilisation, efficiency
- cli: `simulate(...)` and a text renderer for the `glitches simulate` command
- sweep: device mixes under a budget and an SLO
"""
