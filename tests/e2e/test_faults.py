"""Faults against a real tritonserver: SIGKILL and restart in the middle of a stream of
studies, an outage longer than the client's deadline, and model reloads under load.

Every study is accounted for: it ends with a result or with a DetectorError that says
why, never silently (lost = sent - results - failures must be 0).  One dedicated
server, on ports chosen once so that a restart reuses them, serves a copy of the
session repository (the reload test adds model versions to it).  Counts are printed
for the report (``pytest -s``).  The PACS bridge's restart faults are in
tests/client/test_pacs.py, next to its other loopback tests.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import pickle
import shutil
import threading
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from cxr.client import DetectorClient, DetectorError, StudyResult
from cxr.errors import UsageError
from cxr.server.launcher import TritonServer
from cxr.server.net import free_port, stable_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONCURRENCY = 4
HANG_SLACK_S = 15.0  # a hang guard on a 2-core box, not a speed assertion


@pytest.fixture(scope="module")
def triton(repository, tmp_path_factory):
    """A server of our own (the session ``server`` must survive these tests)."""
    repo = tmp_path_factory.mktemp("faults") / "model_repository"
    shutil.copytree(repository, repo, ignore=shutil.ignore_patterns("*.log", "__pycache__"))
    srv = TritonServer(model_repository=repo, grpc_port=stable_port(), http_port=stable_port(), metrics_port=stable_port(),
                       log_file=repo.parent / "tritonserver.log")
    with srv:
        yield srv


def _up(srv: TritonServer) -> TritonServer:
    """``srv`` serving: restarted (same ports) if an earlier test left it down."""
    if srv.process is None or srv.process.poll() is not None:
        srv.start()
    return srv


@pytest.fixture(scope="module")
def studies(synth_data) -> list[bytes]:
    """PNG and DICOM studies, as a PACS gateway would send them."""
    pngs = sorted((synth_data / "images").glob("*.png"))[:6]
    dicoms = sorted((synth_data / "dicom").glob("*.dcm"))[:2]
    return [p.read_bytes() for p in pngs + dicoms]


def _answer(result: StudyResult) -> tuple:
    return result.detections, result.image_size, result.model_version


def _outcomes(futures: list[cf.Future], wait_s: float) -> tuple[list, list, int]:
    """(results, failures, lost): every future must end, within ``wait_s``, one way or the other."""
    done, not_done = cf.wait(futures, timeout=wait_s)
    results = [f.result() for f in done if f.exception() is None]
    failures = [f.exception() for f in done if f.exception() is not None]
    unexpected = [e for e in failures if not isinstance(e, DetectorError)]
    assert not unexpected, f"a study failed with something other than DetectorError: {unexpected[0]!r}"
    return results, failures, len(not_done)


def _retry_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "cxr.client" and "retrying in" in r.getMessage()]


def test_kill_and_restart_mid_stream_every_study_gets_a_result(triton, studies, caplog):
    srv = _up(triton)
    caplog.set_level(logging.WARNING, logger="cxr.client")
    sent, deadline_s = 40, 60.0
    finished = threading.Semaphore(0)

    def one(i: int) -> tuple[int, StudyResult]:
        result = client.predict(studies[i % len(studies)])
        finished.release()
        return i, result

    with DetectorClient(url=srv.url, timeout_s=deadline_s, retries=10, backoff_s=0.2) as client:
        before = {i: _answer(client.predict(s)) for i, s in enumerate(studies)}  # the model before the crash
        with cf.ThreadPoolExecutor(CONCURRENCY) as pool:
            futures = [pool.submit(one, i) for i in range(sent)]
            for _ in range(6):  # a few studies through, the next ones in flight
                assert finished.acquire(timeout=60), "no study finished before the kill"
            killed = time.monotonic()
            srv.kill()  # SIGKILL to the process group: no draining, requests cut mid-call
            done_at_kill = sum(f.done() for f in futures)
            time.sleep(1.0)
            srv.start()
            restarted = time.monotonic()
            outcomes, failures, lost = _outcomes(futures, deadline_s + HANG_SLACK_S)

    retried = _retry_warnings(caplog)
    results = [r for _, r in outcomes]
    print(f"\nkill/restart mid-stream: sent {sent}, results {len(results)}, clear failures {len(failures)}, "
          f"lost {lost}; {done_at_kill} done before the kill, server down {restarted - killed:.1f} s, "
          f"{len(retried)} retried attempts")
    assert lost == 0, f"{lost} studies neither returned nor raised"
    assert len(results) + len(failures) == sent
    assert done_at_kill < sent, "the kill came after the stream had ended: nothing was in flight"
    assert retried, "no attempt was retried: the kill did not reach the client"
    assert all("UNAVAILABLE" in m for m in retried), retried
    # Inference has no side effects, so a request cut by the crash is sent again: with
    # a deadline longer than the restart, every study gets its result.
    assert not failures, f"{len(failures)} studies failed despite the deadline covering the restart: {failures[0]}"
    for i, result in outcomes:
        assert _answer(result) == before[i % len(studies)], "the restarted server answers differently"


def test_outage_longer_than_the_deadline_fails_every_study_clearly(triton, studies, caplog):
    srv = _up(triton)
    caplog.set_level(logging.WARNING, logger="cxr.client")
    sent, deadline_s = 12, 3.0
    started = threading.Semaphore(0)
    elapsed: list[float] = []  # per call, success or not

    def one(i: int) -> StudyResult:
        started.release()
        t0 = time.monotonic()
        try:
            return client.predict(studies[i % len(studies)])
        finally:
            elapsed.append(time.monotonic() - t0)

    try:
        with DetectorClient(url=srv.url, timeout_s=deadline_s, retries=20, backoff_s=0.1) as client:
            client.model_spec()  # as a warm client would have: only inference is left to fail
            with cf.ThreadPoolExecutor(CONCURRENCY) as pool:
                futures = [pool.submit(one, i) for i in range(sent)]
                assert started.acquire(timeout=30)
                srv.kill()  # and it stays down until every call has given up
                outcomes, failures, lost = _outcomes(futures, deadline_s + HANG_SLACK_S)
    finally:
        _up(srv)

    print(f"\noutage longer than the {deadline_s:.0f} s deadline: sent {sent}, results {len(outcomes)}, "
          f"clear failures {len(failures)}, lost {lost}; slowest call {max(elapsed):.1f} s")
    assert lost == 0 and len(outcomes) + len(failures) == sent
    assert failures, "the server was killed, yet no study failed"
    for err in failures:
        assert err.status == "UNAVAILABLE" and err.retryable, str(err)
        assert err.attempts >= 2, f"given up without retrying: {err}"
        assert "deadline" in err.gave_up and "deadline" in str(err), str(err)
    assert max(elapsed) <= deadline_s + HANG_SLACK_S, f"a call outlived its {deadline_s} s deadline by far"
    assert _retry_warnings(caplog)


def _versions(srv: TritonServer, model: str) -> dict[str, str]:
    admin = grpcclient.InferenceServerClient(srv.url)
    try:
        index = admin.get_model_repository_index(as_json=True)["models"]
    finally:
        admin.close()
    return {m["version"]: m.get("state", "") for m in index if m["name"] == model}


def test_model_reload_under_load_fails_no_request(triton, studies):
    srv = _up(triton)
    detector = Path(srv.model_repository) / "detector"
    stop, lock = threading.Event(), threading.Lock()
    answers: list[tuple[float, int, tuple]] = []  # (finished at, study, answer)
    failures: list[DetectorError] = []

    def stream(worker: int) -> None:
        i = worker
        while not stop.is_set():
            try:
                result = client.predict(studies[i % len(studies)])
            except DetectorError as err:  # retries=0: any failure is a failed request
                with lock:
                    failures.append(err)
            else:
                with lock:
                    answers.append((time.monotonic(), i % len(studies), _answer(result)))
            i += CONCURRENCY

    def reload(model: str) -> tuple[float, float]:
        t0 = time.monotonic()
        srv.reload(model)
        return t0, time.monotonic()

    windows = []
    with DetectorClient(url=srv.url, timeout_s=120.0, retries=0) as client:
        before = {i: _answer(client.predict(s)) for i, s in enumerate(studies)}
        assert _versions(srv, "detector") == {"1": "READY"}
        with cf.ThreadPoolExecutor(CONCURRENCY) as pool:
            streams = [pool.submit(stream, w) for w in range(CONCURRENCY)]
            try:
                windows.append(reload("cxr_detector"))  # nothing changed: a no-op
                # A new version of the composing model (same ONNX file): loaded next to
                # version 1 while it serves, then swapped in; the ensemble follows.
                shutil.copytree(detector / "1", detector / "2", ignore=shutil.ignore_patterns("__pycache__"))
                windows.append(reload("detector"))
                assert _versions(srv, "detector").get("2") == "READY"
                # A version that cannot load: the reload says so, version 2 goes on serving.
                shutil.copytree(detector / "2", detector / "3", ignore=shutil.ignore_patterns("__pycache__"))
                (detector / "3" / "model.onnx").write_bytes(b"not an ONNX model")
                t0 = time.monotonic()
                with pytest.raises(UsageError, match=r"reloading model 'detector' failed.*version 3"):
                    srv.reload("detector")
                windows.append((t0, time.monotonic()))
                time.sleep(0.5)  # some requests after the failed load too
            finally:
                stop.set()
                for s in streams:
                    s.result(timeout=120)
                shutil.rmtree(detector / "3", ignore_errors=True)
        assert _versions(srv, "detector").get("2") == "READY"
        after = {i: _answer(client.predict(s)) for i, s in enumerate(studies)}

    during = [sum(a <= t <= b for t, _, _ in answers) for a, b in windows[1:]]
    print(f"\nreload under load: {len(answers)} requests, {len(failures)} failed; "
          f"{during} answered during the version swap / the failed load "
          f"({windows[1][1] - windows[1][0]:.1f} s / {windows[2][1] - windows[2][0]:.1f} s)")
    assert not failures, f"{len(failures)} requests failed during reloads: {failures[0]}"
    assert all(n > 0 for n in during), "no request was answered while a reload ran: not under load"
    assert after == before
    assert all(answer == before[i] for _, i, answer in answers), "a request got a different answer during a reload"


def test_spent_retry_budget_and_unreachable_reload_say_so(studies, tmp_path):
    dead = f"127.0.0.1:{free_port()}"  # bound then released: nothing listens there
    with DetectorClient(url=dead, timeout_s=30.0, retries=2, backoff_s=0.01) as client:
        with pytest.raises(DetectorError) as err:
            client.predict(studies[0])
    assert err.value.retryable and err.value.attempts == 3
    assert err.value.gave_up.startswith("gave up after 3 attempts") and "retries=2 used up" in str(err.value)
    again = pickle.loads(pickle.dumps(err.value))  # a task queue keeps the reason
    assert (again.gave_up, str(again)) == (err.value.gave_up, str(err.value))

    nowhere = TritonServer(model_repository=tmp_path, http_port=free_port())
    with pytest.raises(UsageError, match="cannot reach tritonserver .* to reload 'detector'"):
        nowhere.reload("detector", timeout=5.0)
