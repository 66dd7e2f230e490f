import threading
import time

import pytest

from glitches.scheduler.admission import Admission
from glitches.services.runtime.errors import ResourceExhausted


def test_full_queue_is_refused_at_once_with_a_retry_hint():
    admission = Admission(max_active=1, max_queued=0, queue_wait_s=5)
    with admission.slot():
        started = time.monotonic()
        with pytest.raises(ResourceExhausted, match="retry in about"):
            with admission.slot():
                pass
        assert time.monotonic() - started < 0.5


def test_a_queued_request_runs_when_a_place_frees_or_times_out():
    admission = Admission(max_active=1, max_queued=1, queue_wait_s=0.3)
    order = []
    release = threading.Event()

    def first():
        with admission.slot():
            order.append("first")
            release.wait()

    t = threading.Thread(target=first)
    t.start()
    time.sleep(0.05)
    with pytest.raises(ResourceExhausted, match="waited"):
        with admission.slot():
            pass
    release.set()
    t.join()
    with admission.slot():
        order.append("second")
    assert order == ["first", "second"] and admission.active == 0 and admission.queued == 0


def test_a_queued_request_gives_up_before_its_callers_deadline_with_resource_exhausted():
    admission = Admission(max_active=1, max_queued=4, queue_wait_s=30)
    with admission.slot():
        started = time.monotonic()
        with pytest.raises(ResourceExhausted, match="retry in about") as refused:
            with admission.slot(time_remaining=lambda: 1.0):  # 1 s left: waits 0.5 s, not 30
                pass
        assert 0.4 < time.monotonic() - started < 2.0 and refused.value.retry_after_s >= 1
        with pytest.raises(ResourceExhausted):
            with admission.slot(time_remaining=lambda: 0.2):  # less than the margin: refused at once
                pass
    assert admission.active == 0 and admission.queued == 0


def test_the_grpc_pool_is_sized_from_the_admission_bounds():
    from glitches.scheduler.settings import CONTROL_THREADS, SchedulerSettings

    settings = SchedulerSettings()
    assert settings.grpc_threads == settings.max_active + settings.max_queued + CONTROL_THREADS
    assert SchedulerSettings(max_active=100, max_queued=50).grpc_threads == 150 + CONTROL_THREADS
