"""Conversions between domain objects and protobuf messages used by more than one daemon."""

from __future__ import annotations

from glitches.services.generation.decoding import Finish, Step
from glitches.services.generation.logprobs import TokenLogprob
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2

FINISH_TO_PROTO = {
    None: common_pb2.FINISH_REASON_UNSPECIFIED,
    Finish.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    Finish.EOS: common_pb2.FINISH_REASON_EOS,
    Finish.STOP: common_pb2.FINISH_REASON_STOP,
}
FINISH_FROM_PROTO = {v: k for k, v in FINISH_TO_PROTO.items()}


def logprob_to_proto(record: TokenLogprob) -> common_pb2.TokenLogprobs:
    entry = common_pb2.LogprobEntry
    return common_pb2.TokenLogprobs(chosen=entry(token_id=record.token_id, logprob=record.logprob),
                                    top=[entry(token_id=t, logprob=lp) for t, lp in record.top])


def logprob_from_proto(msg: common_pb2.TokenLogprobs) -> TokenLogprob:
    return TokenLogprob(msg.chosen.token_id, msg.chosen.logprob, tuple((e.token_id, e.logprob) for e in msg.top))


def step_to_proto(step: Step) -> worker_pb2.DecodeToken:
    return worker_pb2.DecodeToken(token_id=step.token_id, index=step.index, step_s=step.step_s,
                                  finish_reason=FINISH_TO_PROTO[step.finish], modeled_step_s=step.modeled_step_s,
                                  logprobs=logprob_to_proto(step.logprobs) if step.logprobs else None)
