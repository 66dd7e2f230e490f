"""The decode-device contract: what any decode device implements and what every one mounts.

- `sink.KvSink`: a place where a request's KV lands (geometry, reserve, write, placement, mark
  written, seal, release, free bytes); `device.DecodeBackend` extends it with stepping.
- `wrappers`: slot limit, KV holds, change notifications, composed around a sink before the
  servicer is built.
- `kv_intake_rpcs` / `kv_receiver`: TransferKV and TransferKVPlaced, the intake RPCs any decode
  device mounts; `request_checks` and `emu_kv` (a sink in a shared-memory segment) for implementers.
Imports `kv_plane` and `services`, never a device package.
"""
