import threading
import time

import pytest

from scheduler.admission import Admission
from services.errors import ResourceExhausted


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
