"""The toy device's glitches.v1.Worker servicer: Info, TransferKV (grpc only), Decode, Release, RenewKvHolds."""

from __future__ import annotations

import os

from glitches.decode_contract import kv_receiver
from glitches.kv_plane.kv_stream_limits import deadline_messages
from glitches.services.generation.decoding import decode_loop
from glitches.services.runtime.errors import FailedPrecondition, InvalidArgument
from glitches.kv_plane.host_identity import host_identity
from glitches.services.cluster.kv_holds import KvHolds, renew_rpc
from glitches.services.generation.proto_convert import step_to_proto
from glitches.services.generation.sampling import Sampling, check_sampling
from glitches.services.auth.request_auth import AuthBoundWorkerId
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc
from tests.toy_decoder.store import ToyStore

KIND = "toy-npu"
DECODE_CLASS = 15  # after a dedicated decode card (10), before a GPU with the decode role (20)
HEADER_S, STALL_S = 2.0, 30.0  # a KV stream's header deadline and longest gap, seconds


class ToyServicer(AuthBoundWorkerId, worker_pb2_grpc.WorkerServicer):
    def __init__(self, store: ToyStore, tokenizer, model_name: str, kv_tokens, auth):
        self.store, self.tokenizer, self.model_name = store, tokenizer, model_name
        self.kv_tokens = kv_tokens  # services.kv_token.KvTokenVerifier, or None (transfers unauthenticated)
        self.auth = auth  # the runtime's request auth (Decode, Release, RenewKvHolds)
        self.holds = KvHolds(3600.0, store.release)  # replaced by the device's started one (attach)
        self.worker_id = ""


    def info(self) -> worker_pb2.InfoResponse:
        g = self.store.geometry()
        per_token = g.bytes_per_token
        return worker_pb2.InfoResponse(
            worker_id=self.worker_id, kind_name=KIND, roles=["decode"], decode_class=DECODE_CLASS, backend="toy",
            emulated=True, device_name="a test toy decode device (transformers on the host CPU, no accelerator)",
            model=self.model_name, slots=self.store.slots, active_requests=len(self.store.active_requests()),
            kv_capacity_bytes=self.store.capacity_tokens * per_token,
            kv_free_bytes=self.store.free_tokens() * per_token,
            kv_bytes_per_token=per_token, pid=os.getpid(), kv_tokens_required=self.kv_tokens is not None,
            kv_transports=["grpc"], host_identity=host_identity(), kv_hold_ttl_s=self.holds.ttl_s,
            kv_held_bytes=self.holds.summary().kv_bytes, expiring_requests=self.holds.summary().expiring)

    def Info(self, request, context):
        return self.info()

    def Prefill(self, request, context):
        raise FailedPrecondition(f"{KIND} workers only decode; send Prefill to a GPU worker")

    def _authorize(self, header: worker_pb2.KvHeader) -> None:
        if self.kv_tokens is not None:
            self.kv_tokens.check(header.kv_token, header.request_id, self.worker_id)

    def TransferKV(self, request_iterator, context):
        received = kv_receiver.receive(self.store, deadline_messages(request_iterator, HEADER_S, STALL_S),
                                       self._authorize)
        self.holds.hold(received.request_id, received.kv_bytes)  # expires unless the scheduler renews it
        return worker_pb2.TransferKVResponse(kv_bytes=received.kv_bytes,
                                             layer_received_unix_s=received.layer_received_unix_s)

    def TransferKVPlaced(self, request_iterator, context):
        raise FailedPrecondition(f"{KIND} workers take KV by grpc only (TransferKV)")

    def Decode(self, request, context):
        self.auth.check(request.auth_token, "decode", request.request_id)
        sampling = Sampling.from_proto(request.sampling)
        check_sampling(sampling)
        generated = list(request.generated_token_ids) or [request.first_token_id]
        vocab = self.store.model.config.vocab_size
        if max(generated) >= vocab:
            raise InvalidArgument(f"token id {max(generated)} is outside the vocabulary (size {vocab})")
        request_id = request.request_id
        self.holds.begin_decode(request_id)
        try:
            steps = decode_loop(lambda token, position: self.store.step(request_id, token, position), generated,
                                request.position, sampling,
                                lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True),
                                cancelled=lambda: not context.is_active())
            for step in steps:
                yield step_to_proto(step)
        finally:
            self.holds.end_decode(request_id)
            self.holds.forget(request_id)
            self.store.release(request_id)

    def Release(self, request, context):
        self.auth.check(request.auth_token, "release", request.request_id)
        self.holds.forget(request.request_id)
        return worker_pb2.ReleaseResponse(released=self.store.release(request.request_id))

    def RenewKvHolds(self, request, context):
        return renew_rpc(self.holds, self.auth, request)
