"""`python -m tests.toy_decoder ...`: run the toy decode device as a daemon until SIGTERM."""

from __future__ import annotations

import argparse

from glitches.services.runtime import worker_runtime
from glitches.services.auth.kv_token import secret_from_environment
from tests.toy_decoder.device import ToyDevice, ToySettings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.toy_decoder", description=__doc__)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--redis-prefix", default="glitches")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--worker-id", default="")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    settings = ToySettings(redis_url=args.redis_url, redis_prefix=args.redis_prefix, model=args.model, port=args.port,
                           http_port=args.http_port, worker_id=args.worker_id, slots=args.slots, threads=args.threads,
                           kv_token_secret=secret_from_environment())
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    worker_runtime.serve(ToyDevice(settings))


if __name__ == "__main__":
    main()
