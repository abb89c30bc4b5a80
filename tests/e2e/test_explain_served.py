"""cxr_explain over real gRPC: a D-RISE map for every detection, equal to the in-process computation;
bad input, a cancelled call and a passed timeout fail only their own request; cxr_detector unchanged."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time
import urllib.request

import numpy as np
import pydicom
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cxr import contract
from cxr.boxes import LetterboxRecord
from cxr.export.parity import Tolerance, compare
from cxr.postprocess import DetectionArrays
from cxr.saliency import SaliencyConfig

pytestmark = pytest.mark.e2e
SETTINGS = SaliencyConfig(masks=16, grid=4, seed=7)  # two detector batches of 8: cheap, still every code path
PARAMS = {contract.SALIENCY_MASKS.name: SETTINGS.masks, contract.SALIENCY_GRID.name: SETTINGS.grid,
          contract.SALIENCY_SEED.name: SETTINGS.seed}
SAME = Tolerance(min_match_rate=1.0, match_iou=0.99, report_score=0.05, score_margin=1e-4)


def _explain(client, data: bytes, params=None, **kwargs):
    inp = grpcclient.InferInput(contract.IMAGE_BYTES.name, [1, 1], contract.IMAGE_BYTES.wire_dtype)
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    outputs = [grpcclient.InferRequestedOutput(t.name) for t in contract.EXPLAIN_OUTPUTS]
    return client.infer(contract.EXPLAIN, [inp], outputs=outputs, parameters={**PARAMS, **(params or {})},
                        client_timeout=kwargs.pop("client_timeout", 120), **kwargs)


def _detections(result, class_names) -> DetectionArrays:
    labels = [class_names.index(x.decode()) + 1 for x in result.as_numpy(contract.LABELS.name)[0]]
    return DetectionArrays(result.as_numpy(contract.BOXES.name)[0], result.as_numpy(contract.SCORES.name)[0],
                           np.array(labels, np.int64), result.as_numpy(contract.BOXES_MM.name)[0])


@pytest.fixture(scope="module")
def class_names(repository):
    return json.loads((repository / "cxr-metadata.json").read_text())["class_names"]


@pytest.fixture(scope="module")
def films(synth_data, real_cr_files, tmp_path_factory):
    """A real CR MONOCHROME1 (pydicom's), the synthetic DX, the synthetic CR as JPEG Lossless SV1
    (dcmtk, the most common lossless CR/DX archive syntax) and a PNG, as bytes."""
    from peers import base_films, make_film

    out = tmp_path_factory.mktemp("explain-films")
    base = base_films(synth_data, out)
    jpeg = make_film(base["cr12"], pydicom.uid.JPEGLosslessSV1, out / "cr12-jpegls1.dcm")
    png = sorted((synth_data / "images").glob("*.png"))[0]
    paths = {"real CR": real_cr_files[0], "DX": base["dx12"], "CR JPEG Lossless": jpeg, "PNG": png}
    return {name: p.read_bytes() for name, p in paths.items()}


def test_a_map_for_every_detection_equal_to_the_in_process_computation(client, films, reference, class_names):
    explained = 0
    for name, data in films.items():
        served = _explain(client, data)
        dets, maps, record = reference.explain(data, SETTINGS)
        report = compare([dets], [_detections(served, class_names)], tolerance=SAME)
        assert report.passed and report.matched == report.n_ref == report.n_test, (name, report.table())
        saliency = served.as_numpy(contract.SALIENCY.name)[0]
        served_record = LetterboxRecord.from_array(served.as_numpy(contract.RECORD.name)[0])
        assert saliency.shape == (len(dets), *served_record.resized_shape), name
        np.testing.assert_allclose(served.as_numpy(contract.RECORD.name)[0], record)
        np.testing.assert_allclose(saliency, maps, atol=2e-3, err_msg=name)
        explained += len(dets)
    assert explained > 0, "the tiny model should detect something on these films"


def test_the_detections_are_the_detection_ensembles(client, films, class_names):
    for name, data in films.items():
        inp = grpcclient.InferInput(contract.IMAGE_BYTES.name, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[data]], dtype=object))
        plain = client.infer(contract.ENSEMBLE, [inp], client_timeout=120)
        report = compare([_detections(plain, class_names)], [_detections(_explain(client, data), class_names)],
                         tolerance=SAME)
        assert report.passed and report.matched == report.n_ref, (name, report.table())


def test_zero_detections_give_zero_maps(client, films):
    result = _explain(client, films["DX"], {contract.SCORE_THRESHOLD.name: 1.0})
    record = LetterboxRecord.from_array(result.as_numpy(contract.RECORD.name)[0])
    assert result.as_numpy(contract.SCORES.name).shape == (1, 0)
    assert result.as_numpy(contract.SALIENCY.name).shape == (1, 0, *record.resized_shape)


@pytest.mark.parametrize("bad,params,message", [
    (b"GIF89a not a radiograph", {}, "unrecognised image format"),
    (None, {contract.SALIENCY_MASKS.name: 0}, "saliency_masks"),
    (None, {contract.SALIENCY_GRID.name: 1000}, "saliency_grid"),
    (None, {contract.SALIENCY_MASKS.name: 2.5}, "saliency_masks=2.5 must be an integer"),
    (None, {contract.TOP_K.name: -1}, "max_detections"),
])
def test_bad_input_fails_only_its_request(client, films, bad, params, message):
    with cf.ThreadPoolExecutor(3) as pool:
        good = [pool.submit(_explain, client, films[k]) for k in ("PNG", "DX")]
        wrong = pool.submit(_explain, client, films["PNG"] if bad is None else bad, params)
        with pytest.raises(InferenceServerException) as err:
            wrong.result()
        assert "INVALID_ARG" in str(err.value.status()) and message in err.value.message()
        assert all(f.result().as_numpy(contract.SALIENCY.name).ndim == 4 for f in good)


def test_one_study_per_request(client, films):
    inp = grpcclient.InferInput(contract.IMAGE_BYTES.name, [2, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[films["PNG"]], [films["PNG"]]], dtype=object))
    with pytest.raises(InferenceServerException, match="batch-size must be <= 1"):
        client.infer(contract.EXPLAIN, [inp], client_timeout=60)


def _explain_stats(server) -> tuple[int, int]:
    """(requests, executions) of the explainer so far."""
    url = f"http://{server.host}:{server.http_port}/v2/models/{contract.EXPLAIN}/stats"
    stats = json.load(urllib.request.urlopen(url, timeout=10))["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_a_passed_timeout_stops_the_work_and_fails_only_that_request(client, server, films):
    many = {contract.SALIENCY_MASKS.name: 5000}  # minutes of masked passes
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        _explain(client, films["PNG"], many, timeout=1_500_000)  # Triton's per-request timeout, in us
    assert time.monotonic() - started < 20
    assert "CANCELLED" in str(err.value.status()) and "timeout of 1.5 s passed after" in err.value.message()
    assert _explain(client, films["PNG"]).as_numpy(contract.SALIENCY.name).ndim == 4  # still serving


def test_a_cancelled_call_stops_the_work(client, server, repository, films):
    many = {**PARAMS, contract.SALIENCY_MASKS.name: 5000}
    log = repository / "tritonserver.log"
    seen = log.read_text().count("the client cancelled the explanation after")
    inp = grpcclient.InferInput(contract.IMAGE_BYTES.name, [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[films["PNG"]]], dtype=object))
    done = threading.Event()
    call = client.async_infer(contract.EXPLAIN, [inp], callback=lambda result, error: done.set(), parameters=many)
    time.sleep(1.0)  # the explainer is at work on it
    call.cancel()
    assert done.wait(10)
    # One explainer instance: the next explanation starts only once the cancelled one has stopped,
    # long before its 5000 masked passes would have ended.
    started = time.monotonic()
    assert _explain(client, films["PNG"]).as_numpy(contract.SALIENCY.name).ndim == 4
    assert time.monotonic() - started < 30
    stopped = [line for line in log.read_text().splitlines() if "the client cancelled the explanation after" in line]
    assert len(stopped) == seen + 1 and "CANCELLED" in stopped[-1] and "of 5001 detector passes" in stopped[-1]
    assert int(stopped[-1].split("after ")[1].split(" of")[0]) < 5001


def test_the_detection_ensemble_never_runs_the_explainer(client, server, films):
    # Triton counts a request once its execution ends, which may be after its response was read
    before, previous = _explain_stats(server), None
    while before != previous:
        time.sleep(0.5)
        before, previous = _explain_stats(server), before
    inp = grpcclient.InferInput(contract.IMAGE_BYTES.name, [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[films["PNG"]]], dtype=object))
    for _ in range(3):
        client.infer(contract.ENSEMBLE, [inp], client_timeout=60)
    assert _explain_stats(server) == before
