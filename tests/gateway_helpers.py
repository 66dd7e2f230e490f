"""What the gateway's in-process tests share: a completion with zero timings, a fake scheduler client for the
gateway app (starlette's TestClient over it), and a minimal keyed scheduler servicer for the API-key tests."""

from __future__ import annotations

from glitches.types import ClusterStatus, Completion, Timings
from glitches.services.stubs.glitches.v1 import scheduler_pb2, scheduler_pb2_grpc

TIMINGS = Timings(*([0.0] * 11))


def completion(text="Hello world", finish="length") -> Completion:
    """A finished completion: prompt ids (1, 2), generated ids (5, 6, 7), decoded on fpga-0 after gpu-0."""
    return Completion("rid", text, (1, 2), (5, 6, 7), finish, "fpga", "fpga-0", "gpu-0", 3, 2, TIMINGS)


class FakeClient:
    """Stands in for AsyncClient: yields `items` in order; an exception item is raised."""

    def __init__(self, items=(), status_error=None):
        self.items = list(items)
        self.status_error = status_error
        self.calls: list[tuple[str, dict]] = []
        self.closed = 0

    def stream(self, prompt, **kwargs):
        self.calls.append((prompt, kwargs))
        items = self.items

        async def gen():
            try:
                for item in items:
                    if isinstance(item, Exception):
                        raise item
                    yield item
            finally:
                self.closed += 1
        return gen()

    async def status(self):
        if self.status_error:
            raise self.status_error
        return ClusterStatus("tiny", (), 0)

    async def close(self):
        pass


class OkScheduler(scheduler_pb2_grpc.SchedulerServicer):
    """A real gRPC Scheduler servicer that answers Status (model "m") and every Generate with the text "ok"."""

    def Status(self, request, context):
        return scheduler_pb2.StatusResponse(model="m")

    def Generate(self, request, context):
        yield scheduler_pb2.GenerateResponse(final=scheduler_pb2.GenerateFinal(text="ok"))
