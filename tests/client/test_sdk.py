"""cxr.client against a real tritonserver: same answers sync/async and as in process,
retries only what is retryable, validation before sending, no patient data in logs."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("tritonclient.grpc")  # the client extra
pytest.importorskip("pytriton")  # the tritonserver binary these tests start

import tritonclient.grpc  # noqa: E402  (after the skips)
from PIL import Image  # noqa: E402

from cxr.client import AsyncDetectorClient, DetectorClient, DetectorError, Pixels, StudyResult  # noqa: E402
from cxr.server.launcher import TritonServer  # noqa: E402
from cxr.server.net import free_port

pytestmark = pytest.mark.e2e
FAST = {"timeout_s": 120.0, "retries": 0}  # a warm local server: no reason to retry


@pytest.fixture(scope="module")
def client(server):
    with DetectorClient(url=server.url, **FAST) as c:
        yield c


@pytest.fixture(scope="module")
def pngs(synth_data) -> list[Path]:
    return sorted((synth_data / "images").glob("*.png"))[:3]


@pytest.fixture(scope="module")
def dicoms(synth_data) -> list[Path]:
    return sorted((synth_data / "dicom").glob("*.dcm"))[:2]


@pytest.fixture(scope="module")
def class_names(repository) -> list[str]:
    return json.loads((repository / "cxr-metadata.json").read_text())["class_names"]


def _answer(result: StudyResult) -> tuple:
    """Everything but latency: what two clients must agree on exactly."""
    return result.detections, result.image_size, result.sop_instance_uid, result.model_version, result.model_name


def _assert_close(served: StudyResult, boxes, scores, labels, *, px=1e-3, score=1e-4) -> None:
    """Every expected detection has a served twin (same label, box within px, score within score)."""
    assert len(served.detections) == len(scores)
    for box, s, label in zip(boxes, scores, labels):
        twins = [d for d in served.detections if d.label == label]
        assert twins, f"no served {label}"
        best = min(twins, key=lambda d: np.abs(np.subtract(d.box_xyxy_px, box)).max())
        assert np.abs(np.subtract(best.box_xyxy_px, box)).max() <= px
        assert abs(best.score - s) <= score


def _dead_url() -> str:
    return f"127.0.0.1:{free_port()}"  # bound then released: nothing listens there


# ----------------------------------------------------------------------------- parity


def test_sync_and_async_clients_give_identical_results(server, pngs, dicoms):
    studies = [*pngs, *dicoms]
    with DetectorClient(url=server.url, **FAST) as c:
        sync = c.predict_study(studies)

    async def run():
        async with AsyncDetectorClient(url=server.url, **FAST) as c:
            return await c.predict_study(studies), await c.predict(studies[-1])

    concurrent, single = asyncio.run(run())
    assert [_answer(r) for r in sync] == [_answer(r) for r in concurrent]
    assert _answer(single) == _answer(sync[-1])
    assert sum(len(r.detections) for r in sync) > 0, "the tiny model should detect something"


def test_results_equal_the_in_process_pipeline(client, pngs, dicoms, reference, class_names):
    studies = [p.read_bytes() for p in [*pngs, *dicoms]]
    local = reference(studies, batch_size=1)
    for data, served, ref in zip(studies, client.predict_study(studies), local):
        _assert_close(served, ref.boxes, ref.scores, [class_names[int(c) - 1] for c in ref.labels])
        assert served.image_size == (256, 256)  # synth films; the model saw 128 px
        assert served.model_version not in ("", "unexported")
        for det in served.detections:
            if data.startswith(b"\x89PNG"):
                assert det.box_mm is None
            else:
                np.testing.assert_allclose(det.box_mm, np.multiply(det.box_xyxy_px, 0.143), rtol=1e-4)
    json.dumps([r.to_dict() for r in client.predict_study(studies[:1])])  # JSON-ready as is


def test_dicom_file_and_dataset_keep_sop_instance_uid(client, dicoms):
    ds = pydicom.dcmread(dicoms[0])
    from_file, from_dataset = client.predict(dicoms[0]), client.predict(ds)
    assert from_file.sop_instance_uid == from_dataset.sop_instance_uid == str(ds.SOPInstanceUID)
    assert from_dataset.detections == from_file.detections
    assert from_dataset.image_size == (int(ds.Rows), int(ds.Columns))


@pytest.mark.parametrize("dtype,shared_memory", [("uint8", False), ("uint8", True), ("uint16", True)])
def test_pixels_input_with_and_without_shared_memory(server, pngs, dtype, shared_memory, monkeypatch):
    film = np.asarray(Image.open(pngs[0]))
    assert film.dtype == np.uint8 and film.ndim == 2
    image = film if dtype == "uint8" else Pixels(film.astype(np.uint16) * 257, bits_stored=16)
    registered = []
    original = tritonclient.grpc.InferenceServerClient.register_system_shared_memory

    def spy(self, name, *args, **kwargs):
        registered.append(name)
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(tritonclient.grpc.InferenceServerClient, "register_system_shared_memory", spy)
    with DetectorClient(url=server.url, use_shared_memory=shared_memory, **FAST) as c:
        encoded, raw = c.predict(pngs[0]), c.predict(image)
    assert len(registered) == int(shared_memory)  # only PIXELS travels through shared memory

    async def run():
        async with AsyncDetectorClient(url=server.url, use_shared_memory=shared_memory, **FAST) as c:
            return await c.predict(image)

    assert _answer(asyncio.run(run())) == _answer(raw)
    assert raw.image_size == film.shape and raw.sop_instance_uid is None
    score_tol = 1e-4 if dtype == "uint8" else 1e-3  # x257 / 65535 is not bit-identical to x / 255
    _assert_close(raw, [d.box_xyxy_px for d in encoded.detections], [d.score for d in encoded.detections],
                  [d.label for d in encoded.detections], px=1e-2 if dtype == "uint16" else 1e-3, score=score_tol)
    if sys.platform.startswith("linux"):
        assert not list(Path("/dev/shm").glob("cxr_client_*")), "shared memory region left behind"


def test_pixels_spacing_gives_boxes_in_mm(client, pngs):
    film = np.asarray(Image.open(pngs[0]))
    result = client.predict(Pixels(film, spacing_mm=(0.2, 0.2)), score_threshold=0.0)
    assert result.detections
    for det in result.detections:
        np.testing.assert_allclose(det.box_mm, np.multiply(det.box_xyxy_px, 0.2), rtol=1e-4)


# ------------------------------------------------------------------ request parameters


def test_request_parameters_threshold_and_top_k(client, server, pngs):
    everything = client.predict(pngs[1], score_threshold=0.0)
    assert len(everything.detections) > 1
    high = client.predict(pngs[1], score_threshold=0.999)
    assert all(d.score >= 0.999 for d in high.detections)
    top1 = client.predict(pngs[1], score_threshold=0.0, top_k=1)
    assert top1.detections == everything.detections[:1]
    with DetectorClient(url=server.url, score_threshold=0.0, top_k=2, **FAST) as defaults:
        assert defaults.predict(pngs[1]).detections == everything.detections[:2]
        assert defaults.predict(pngs[1], top_k=1).detections == everything.detections[:1]  # per call wins


def test_iou_threshold_reaches_the_server_from_both_clients(client, server, pngs):
    """The contract's third postprocess override: the SDK could not send it (bug), though the server honours it."""
    everything = client.predict(pngs[1], score_threshold=0.0)  # the model's own NMS IoU, 0.5
    strict = client.predict(pngs[1], score_threshold=0.0, iou_threshold=0.05)
    assert _worst_overlap(everything) > 0.05  # so the override has something to suppress
    assert strict.detections and _worst_overlap(strict) <= 0.05 + 1e-6  # per-class NMS at 0.05
    with DetectorClient(url=server.url, iou_threshold=0.05, **FAST) as defaults:
        assert defaults.predict(pngs[1], score_threshold=0.0).detections == strict.detections

    async def run() -> StudyResult:
        async with AsyncDetectorClient(url=server.url, **FAST) as c:
            return await c.predict(pngs[1], score_threshold=0.0, iou_threshold=0.05)

    assert asyncio.run(run()).detections == strict.detections


def _worst_overlap(result: StudyResult) -> float:
    """The largest IoU between two detections of one class."""
    worst = 0.0
    for i, a in enumerate(result.detections):
        for b in result.detections[i + 1:]:
            if a.label == b.label:
                (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a.box_xyxy_px, b.box_xyxy_px
                inter = max(min(ax2, bx2) - max(ax1, bx1), 0.0) * max(min(ay2, by2) - max(ay1, by1), 0.0)
                worst = max(worst, inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter))
    return worst


# ------------------------------------------------------------------------------ errors


def test_bad_input_is_invalid_argument_with_the_server_message(client, pngs):
    data = pngs[0].read_bytes()
    with pytest.raises(DetectorError) as err:
        client.predict(data[: len(data) // 3])  # header intact: only the server can tell
    assert err.value.status == "INVALID_ARGUMENT"
    assert "truncated" in err.value.message
    assert err.value.retryable is False and err.value.attempts == 1
    again = pickle.loads(pickle.dumps(err.value))  # survives multiprocessing / task queues
    assert (again.status, again.message, again.retryable) == ("INVALID_ARGUMENT", err.value.message, False)


def test_deadline_exceeded_is_not_retried(server, pngs):
    with DetectorClient(url=server.url, timeout_s=0.001, retries=3, backoff_s=0.0) as c:
        with pytest.raises(DetectorError) as err:
            c.predict(pngs[0])
    assert err.value.status == "DEADLINE_EXCEEDED" and not err.value.retryable and err.value.attempts == 1


def test_model_without_the_detector_contract_is_refused(server, pngs):
    with DetectorClient(url=server.url, model_name="preprocess", **FAST) as c:
        with pytest.raises(DetectorError) as err:
            c.predict(pngs[0])
    assert err.value.status == "FAILED_PRECONDITION" and "lacks BOXES" in err.value.message
    assert not err.value.retryable


def test_nothing_listening_is_retryable_after_the_retries(pngs):
    with DetectorClient(url=_dead_url(), timeout_s=10.0, retries=2, backoff_s=0.01) as c:
        with pytest.raises(DetectorError) as err:
            c.predict(pngs[0])
    assert err.value.status == "UNAVAILABLE" and err.value.retryable
    assert err.value.attempts == 3


def test_async_nothing_listening_is_retryable(pngs):
    async def run():
        async with AsyncDetectorClient(url=_dead_url(), timeout_s=10.0, retries=1, backoff_s=0.01) as c:
            await c.predict(pngs[0])

    with pytest.raises(DetectorError) as err:
        asyncio.run(run())
    assert err.value.status == "UNAVAILABLE" and err.value.retryable and err.value.attempts == 2


@pytest.mark.slow
def test_client_recovers_when_the_server_comes_up_later(repository, pngs, client, tmp_path):
    grpc_port = free_port()
    # Created first, like a PACS bridge that starts before the inference server.
    # Its failed connects put the gRPC channel in reconnect backoff, which fails every call
    # at once until it ends; the client caps it (here at timeout_s, 3 s), and the retries
    # below span that: jittered waits of at least 0.125 + 0.25 + 0.5 + 1 + 2 + 2.5 × 3 s.
    late = DetectorClient(url=f"127.0.0.1:{grpc_port}", timeout_s=3.0, retries=8, backoff_s=0.25)
    with pytest.raises(DetectorError) as err:
        late.predict(pngs[0])
    assert err.value.retryable
    srv = TritonServer(model_repository=repository, grpc_port=grpc_port, http_port=free_port(),
                       metrics_port=free_port(), log_file=tmp_path / "tritonserver.log")
    with srv, late:
        # Once ready, the channel must reconnect within its capped reconnect backoff.
        result = late.predict(pngs[0], timeout_s=60.0)
    assert _answer(result) == _answer(client.predict(pngs[0]))


@pytest.mark.parametrize("image,kwargs,message", [
    (b"", {}, "empty input"),
    ("missing.png", {}, "no such image file"),
    (np.zeros((64, 64), np.float32), {}, "pixel dtype float32"),
    (np.zeros((64, 64, 3), np.uint8), {}, "2-D [H, W]"),
    (np.zeros((4, 64), np.uint16), {}, "at least 8 pixels"),
    (Pixels(np.full((64, 64), 4096, np.uint16), bits_stored=12), {}, "above the 12-bit maximum 4095"),
    (b"GIF89a not a radiograph", {}, "unrecognised image format"),
    (b"\x89PNG\r\n\x1a\n", {}, "IHDR"),
    (1234, {}, "unsupported input type int"),
    (np.zeros((64, 64), np.uint8), {"score_threshold": 7.0}, "score_threshold must be in [0, 1]"),
    (np.zeros((64, 64), np.uint8), {"top_k": 0}, "top_k must be a positive integer"),
    (np.zeros((64, 64), np.uint8), {"iou_threshold": 0.0}, "iou_threshold must be in (0, 1]"),
], ids=lambda v: v.split(" ")[0] if isinstance(v, str) else "")
def test_invalid_input_fails_before_sending(tmp_path, image, kwargs, message):
    if isinstance(image, str):
        image = tmp_path / image
    # Nothing listens there: had anything been sent the status would be UNAVAILABLE.
    with DetectorClient(url=_dead_url(), retries=0) as c:
        with pytest.raises(DetectorError) as err:
            c.predict(image, **kwargs)
    assert err.value.status == "CLIENT" and not err.value.retryable and err.value.attempts == 0
    assert message in err.value.message


@pytest.mark.parametrize("options,message", [
    ({"root_certificates": "ca.pem"}, "ssl=False"),
    ({"ssl": True, "root_certificates": "nowhere/ca.pem"}, "root_certificates file not found"),
    ({"ssl": True, "private_key": "key.pem"}, "both private_key and certificate_chain"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"retries": -1}, "retries"),
    ({"max_backoff_s": 0}, "max_backoff_s"),
    ({"url": "grpc://host:8001"}, "no scheme"),
])
def test_invalid_options_fail_in_the_constructor(tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    for name in ("ca.pem", "key.pem"):
        (tmp_path / name).write_text("PEM")
    with pytest.raises(DetectorError) as err:
        DetectorClient(**options)
    assert err.value.status == "CLIENT" and message in err.value.message


def test_retry_waits_are_capped_by_max_backoff():
    from cxr.client.errors import DetectorError as Err

    c = DetectorClient(url="127.0.0.1:1", retries=20, backoff_s=1.0, max_backoff_s=0.3)
    try:
        err = Err("UNAVAILABLE", "connection refused", retryable=True)
        deadline = time.monotonic() + 3600
        delays = [c._retry_delay(err, attempt, time.monotonic(), deadline) for attempt in range(1, 12)]
        assert all(0.15 <= d <= 0.3 for d in delays), delays  # uncapped, attempt 11 would wait 512-1024 s
    finally:
        c.close()


@pytest.mark.parametrize("kwargs", [{}, {"retries": 0}, {"retries": 6, "backoff_s": 0.1}, {"timeout_s": 0.5}])
def test_channel_reconnect_backoff_is_shorter_than_the_last_retry_wait(kwargs):
    """While gRPC backs off reconnecting, every call fails at once: the backoff must end
    within the last retry wait, or a server up again before it would still be missed."""
    c = DetectorClient(url="127.0.0.1:1", **kwargs)
    try:
        args = dict(c._connection_kwargs()["channel_args"])
        err = DetectorError("UNAVAILABLE", "connection refused", retryable=True)
        last = c.retries if c.retries else 1
        waits = [c._retry_delay(err, last, time.monotonic(), time.monotonic() + 3600) for _ in range(200)]
        waits = [w for w in waits if w is not None] or [c.backoff_s * 0.5]
        assert args["grpc.max_reconnect_backoff_ms"] <= min(waits) * 1000 + 1, (args, min(waits))
        assert args["grpc.max_reconnect_backoff_ms"] <= c.timeout_s * 1000
        assert args["grpc.initial_reconnect_backoff_ms"] <= args["grpc.max_reconnect_backoff_ms"]
    finally:
        c.close()


# -------------------------------------------------------------------------------- TLS


class _Recorder:
    """Stands in for tritonclient's InferenceServerClient: records how it was built."""

    calls: list[dict] = []

    def __init__(self, **kwargs):
        type(self).calls.append(kwargs)

    def close(self):
        pass


class _AsyncRecorder(_Recorder):
    async def close(self):
        pass


def test_tls_options_are_passed_through_to_tritonclient(tmp_path, monkeypatch):
    import tritonclient.grpc.aio

    files = {}
    for key in ("root_certificates", "private_key", "certificate_chain"):
        files[key] = tmp_path / f"{key}.pem"
        files[key].write_text("PEM")
    monkeypatch.setattr(tritonclient.grpc, "InferenceServerClient", _Recorder)
    monkeypatch.setattr(tritonclient.grpc.aio, "InferenceServerClient", _AsyncRecorder)
    _Recorder.calls = []
    with DetectorClient(url="pacs.example:443", ssl=True, **files):
        pass

    async def run():
        async with AsyncDetectorClient(url="pacs.example:443", ssl=True, **files):
            pass

    asyncio.run(run())
    assert len(_Recorder.calls) == 2
    for kwargs in _Recorder.calls:
        assert kwargs["url"] == "pacs.example:443" and kwargs["ssl"] is True
        assert {k: kwargs[k] for k in files} == {k: str(v) for k, v in files.items()}


# ---------------------------------------------------------------------------- privacy


def test_no_patient_data_in_logs(client, dicoms, caplog):
    ds = pydicom.dcmread(dicoms[0])
    assert str(ds.PatientName).startswith("SYNTH^PATIENT")
    secrets = [str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate), str(ds.SOPInstanceUID)]
    caplog.set_level(logging.DEBUG)
    client.predict(dicoms[0])
    client.predict(ds)
    truncated = dicoms[0].read_bytes()[:2000]
    with pytest.raises(DetectorError):
        client.predict(truncated)
    with DetectorClient(url=_dead_url(), timeout_s=5.0, retries=1, backoff_s=0.01) as dead:
        with pytest.raises(DetectorError):
            dead.predict(ds)
    records = [r for r in caplog.records if r.name.startswith("cxr.client")]
    assert records, "the client should log something at debug level"
    text = caplog.text + " ".join(str(r.args) for r in caplog.records)
    for secret in secrets:
        assert secret not in text
