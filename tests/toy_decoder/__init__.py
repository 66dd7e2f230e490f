"""A toy decode device, as a whole device package: the proof that a new kind of decode device needs no file
outside its own package (issue #12 item 5, docs/architecture.md "Adding a device kind").

Kind "toy-npu", role "decode", decode class 15 (after an FPGA's 10, before a decode GPU's 20). It takes KV
only by transport grpc (TransferKV, through glitches/decode_contract/kv_receiver.py's protocol into its own store) and
decodes with transformers' float32 model on the host CPU, one token at a time, so its greedy tokens equal
transformers' generate. It is a test toy: emulated, backend "toy", and its Info says so.

    python -m tests.toy_decoder --redis-url URL --redis-prefix P --model smollm2-135m-instruct

runs it as a daemon beside the real ones (the cluster's KV token secret from GLITCHES_KV_TOKEN_SECRET).
"""
