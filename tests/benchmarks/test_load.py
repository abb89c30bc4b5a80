"""The one closed-loop load driver behind `cxr bench` points and `cxr bench soak`: exact request
counts at any concurrency, per-worker warm-up, failure statuses, batches.  No timing assertions."""

from __future__ import annotations

import threading
import time

import pytest

from cxr.benchmarks.load import Call, run_load
from cxr.benchmarks.stats import LoadConfig, run_point
from cxr.client.errors import DetectorError


def test_a_point_sends_exactly_the_requested_count_at_any_concurrency():
    # Calls that overlap: a driver that counts *completed* calls lets every waiting
    # worker start one more (4 calls for 2 requests here); both callers ask for N.
    stats, _ = run_point(lambda b: time.sleep(0.2), [1], backend="slow", concurrency=4,
                         load=LoadConfig(requests=2, seconds=60, warmup=0))
    assert stats.requests + stats.errors == 2


def test_warmup_is_per_worker_unrecorded_and_takes_items_in_turn():
    seen, lock = [], threading.Lock()

    def fn(batch):
        with lock:
            seen.append(tuple(batch))

    run = run_load(fn, list(range(100)), requests=5, concurrency=3, batch=2, warmup=2)
    assert len(seen) == 3 * 2 + 5 and len(run.calls) == 5
    assert sorted(i for b in seen for i in b) == list(range(22))  # every item once, in batches of 2
    assert all(c.ok and c.images == 2 and 0.0 <= c.start <= c.end for c in run.calls)


def test_failures_are_calls_with_a_status_and_the_first_exception_per_status():
    def fn(batch):
        if batch[0] == "bad":
            raise DetectorError("INVALID_ARGUMENT", f"not an image #{len(done)}")
        if batch[0] == "boom":
            raise KeyError("bug")

    done: list[Call] = []
    run = run_load(fn, ["ok", "bad", "boom"], requests=7, on_done=done.append)
    assert [c.status for c in run.calls] == ["OK", "INVALID_ARGUMENT", "KeyError"] * 2 + ["OK"]
    assert done == run.calls and [c.ok for c in run.calls].count(False) == 4
    assert list(run.failures) == ["INVALID_ARGUMENT", "KeyError"]
    assert run.messages["INVALID_ARGUMENT"] == "INVALID_ARGUMENT: not an image #1"  # the first, not the last


def test_nonsense_is_refused_before_any_call():
    for kwargs, match in (({"concurrency": 0}, "concurrency and batch"), ({"batch": 0}, "concurrency and batch"),
                          ({"requests": -1}, "requests and warmup")):
        with pytest.raises(ValueError, match=match):
            run_load(lambda b: pytest.fail("called"), [1], **{"requests": 1, **kwargs})
    with pytest.raises(ValueError, match="no input items"):
        run_load(lambda b: None, [], requests=1)
