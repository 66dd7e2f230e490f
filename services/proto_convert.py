"""Conversions between domain objects and protobuf messages used by more than one daemon."""

from __future__ import annotations

from services.decoding import Finish, Step
from services.stubs.glitches.v1 import common_pb2, worker_pb2

FINISH_TO_PROTO = {
    None: common_pb2.FINISH_REASON_UNSPECIFIED,
    Finish.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    Finish.EOS: common_pb2.FINISH_REASON_EOS,
    Finish.STOP: common_pb2.FINISH_REASON_STOP,
}
FINISH_FROM_PROTO = {v: k for k, v in FINISH_TO_PROTO.items()}


def step_to_proto(step: Step) -> worker_pb2.DecodeToken:
    return worker_pb2.DecodeToken(token_id=step.token_id, index=step.index, step_s=step.step_s,
                                  finish_reason=FINISH_TO_PROTO[step.finish], modeled_step_s=step.modeled_step_s)
