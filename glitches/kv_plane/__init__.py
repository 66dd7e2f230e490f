"""The KV data plane: both ends of every way prefill KV travels from a GPU to a decode device.

Below the device packages (it imports only `services`): the KV region's layout at the card ABI's
offsets (`kv_abi`, `kv_layout`), the shared-memory segment and its space (`hbm_segment`,
`hbm_manager`), the senders (`grpc_sender`, `placed_sender` with `shm_writer` / `nixl_writer`), the
NIXL end that receives (`nixl_receiver`), the wire format of TransferKV (`kv_wire`), stream limits,
copy threads, and the one place that decides the transport (`transport`).
"""
