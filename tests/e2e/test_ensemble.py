"""The served ensemble over real gRPC equals the in-process pipeline; bad input fails alone."""

from __future__ import annotations

import concurrent.futures as cf
import json
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cxr.export.parity import Tolerance, compare
from cxr.postprocess import DetectionArrays

pytestmark = pytest.mark.e2e
OUTPUTS = ("BOXES", "BOXES_MM", "SCORES", "LABELS", "MODEL_VERSION")
# Identity: IoU >= 0.99 and |delta score| <= 1e-4 for every detection the pipeline returns.
SAME = Tolerance(min_match_rate=1.0, match_iou=0.99, report_score=0.05, score_margin=1e-4)


def _infer(client, data: bytes, params=None):
    inp = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    return client.infer("cxr_detector", [inp], outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS],
                        parameters=params, client_timeout=120)


def _detections(result, class_names) -> DetectionArrays:
    scores = result.as_numpy("SCORES")[0]
    labels = np.array([class_names.index(x.decode()) + 1 for x in result.as_numpy("LABELS")[0]], np.int64)
    return DetectionArrays(result.as_numpy("BOXES")[0], scores, labels, result.as_numpy("BOXES_MM")[0])


@pytest.fixture(scope="module")
def studies(synth_data):
    pngs = sorted((synth_data / "images").glob("*.png"))[:6]
    dicoms = sorted((synth_data / "dicom").glob("*.dcm"))[:3]
    return [p.read_bytes() for p in pngs + dicoms]


@pytest.fixture(scope="module")
def class_names(repository):
    return json.loads((repository / "cxr-metadata.json").read_text())["class_names"]


def test_ensemble_equals_in_process_pipeline(client, studies, reference, class_names):
    served = [_detections(_infer(client, s), class_names) for s in studies]
    local = reference(studies, batch_size=1)
    assert sum(len(d) for d in local) > 0, "the tiny model should detect something"
    report = compare(local, served, tolerance=SAME)
    assert report.passed and report.matched == report.n_ref == report.n_test, report.table()
    assert report.max_score_delta <= 1e-4


def test_dicom_results_carry_mm_and_png_results_do_not(client, studies):
    png, dcm = _infer(client, studies[0]), _infer(client, studies[-1])
    if len(png.as_numpy("SCORES")[0]):
        assert np.isnan(png.as_numpy("BOXES_MM")[0]).all()
    boxes, mm = dcm.as_numpy("BOXES")[0], dcm.as_numpy("BOXES_MM")[0]
    np.testing.assert_allclose(mm, boxes * 0.143, rtol=1e-4)  # synth DICOM spacing
    assert dcm.as_numpy("MODEL_VERSION")[0, 0].decode() != "unexported"


def test_boxes_are_in_original_pixels(client, studies):
    result = _infer(client, studies[0])
    boxes = result.as_numpy("BOXES")[0]
    assert ((boxes >= 0) & (boxes <= 256)).all()  # synth films are 256 px; the model saw 128


def test_request_parameters_override_thresholds(client, studies):
    all_dets = _infer(client, studies[1], {"score_threshold": 0.0}).as_numpy("SCORES")[0]
    top1 = _infer(client, studies[1], {"score_threshold": 0.0, "top_k": 1}).as_numpy("SCORES")[0]
    assert len(top1) == min(1, len(all_dets))
    high = _infer(client, studies[1], {"score_threshold": 0.999}).as_numpy("SCORES")[0]
    assert (high >= 0.999).all()


def test_concurrent_requests_are_batched_and_change_nothing(client, server, studies, class_names):
    sequential = [_detections(_infer(client, s), class_names) for s in studies]
    before = _detector_stats(server)
    with cf.ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda s: _detections(_infer(client, s), class_names), studies * 3))
    after = _detector_stats(server)
    report = compare(sequential * 3, concurrent, tolerance=SAME)
    assert report.passed, report.table()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(studies) * 3
    assert executions < inferences, f"no dynamic batching: {executions} executions for {inferences} images"


def _detector_stats(server) -> tuple[int, int]:
    """(inference_count, execution_count) of the detector once they stop moving: Triton may count a
    request's detector run just after the client has its answer, so a single read taken right after
    the last answer can miss it (seen under load: 28 inferences for 27 requests)."""
    url = f"http://{server.host}:{server.http_port}/v2/models/detector/stats"

    def read() -> tuple[int, int]:
        stats = json.load(urllib.request.urlopen(url, timeout=10))["model_stats"][0]
        return int(stats["inference_count"]), int(stats["execution_count"])

    last, deadline = read(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = read()
        if now == last:
            return now
        last = now
    return last


@pytest.mark.parametrize("bad,message", [
    (b"", "empty input"),
    (b"GIF89a not a radiograph", "unrecognised image format"),
    ("truncated", "truncated"),
])
def test_bad_input_fails_only_itself(client, studies, bad, message):
    if bad == "truncated":
        bad = studies[0][: len(studies[0]) // 3]
    with cf.ThreadPoolExecutor(4) as pool:
        good = [pool.submit(_infer, client, s) for s in studies[:3]]
        wrong = pool.submit(_infer, client, bad)
        with pytest.raises(InferenceServerException) as err:
            wrong.result()
        assert "INVALID_ARG" in str(err.value.status()) and message in err.value.message()
        assert all(f.result().as_numpy("SCORES").ndim == 2 for f in good)
    assert _infer(client, studies[0]).as_numpy("SCORES").ndim == 2  # still serving


def test_non_radiograph_dicom_is_invalid_arg(client, pydicom_test_files):
    with pytest.raises(InferenceServerException) as err:
        _infer(client, (pydicom_test_files / "SC_rgb_small_odd.dcm").read_bytes())
    assert "PhotometricInterpretation RGB is not a radiograph" in err.value.message()


def test_bad_request_parameter_is_invalid_arg(client, studies):
    with pytest.raises(InferenceServerException, match="score_threshold"):
        _infer(client, studies[0], {"score_threshold": 7.0})


def test_raw_pixels_input(client, synth_data, reference, class_names):
    from PIL import Image

    path = sorted((synth_data / "images").glob("*.png"))[0]
    pixels = np.asarray(Image.open(path), dtype=np.uint16) * 257  # 8-bit film as 16-bit pixels
    inp = grpcclient.InferInput("PIXELS", [1, *pixels.shape], "UINT16")
    inp.set_data_from_numpy(pixels[None])
    result = client.infer("cxr_detector", [inp], outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS], client_timeout=120)
    served = _detections(result, class_names)
    local = reference([path.read_bytes()], batch_size=1)[0]
    report = compare([local], [served], tolerance=Tolerance(min_match_rate=1.0, match_iou=0.99, report_score=0.05, score_margin=1e-3))
    assert report.passed, report.table()
