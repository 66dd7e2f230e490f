"""The GPU device: the engine (step loop, packed attention, one KV block allocator, request table) and its
daemon, for prefill (KV sent through kv_plane), GPU-assist decode, and the decode role (a KvSink of
decode_contract). No other device package is imported."""
