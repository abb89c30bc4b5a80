"""The explainer's serving steps (cxr.serving.explain), its config and adapter, without a server.

The live server runs the same code in tests/e2e/test_explain_served.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cxr import contract
from cxr.errors import InvalidRequestError
from cxr.postprocess import PostprocessConfig
from cxr.preprocess import PreprocessConfig
from cxr.saliency import SaliencyConfig
from cxr.serving.boundary import StepFailed, respond
from cxr.serving.explain import IN_FLIGHT, ExplainerSettings, Watch, explain_request, explain_study, saliency_overrides

REPO = Path(__file__).resolve().parents[2] / "model_repository"
PRE = PreprocessConfig(size=64)
# The detection path as committed before cxr_explain existed: nobody who does not ask for a map
# pays anything, so these files do not change with it (a deliberate change updates the pin).
DETECTION_CONFIGS = {
    "cxr_detector/config.pbtxt": "163b51a33911faaba2cd68000254d4e5fddf70030bc6c404d9f58769dd1f945c",
    "preprocess/config.pbtxt": "ef92a4c74a1e4b27c7db21b57bffa13e6f347d85d8ee1f91bde1d58b33d2e629",
    "detector/config.pbtxt": "740bd422ec2dbedfd045288bfc5e879646d9a4ba438625a178ca1d557c0533a5",
    "detector/configs/gpu-onnx.pbtxt": "46db06af6ed557ddf144d76dd61cfb1e4cfa5f1517826fc32ba3c23f04840f4f",
    "detector/configs/gpu-trt.pbtxt": "f835e6e48f62b05aa2a873436835d0d830c07e95ee6eada11ed3a2ff37a024d0",
    "postprocess/config.pbtxt": "d46269dc528ff86198d3fdcd8e3efcaa5211334cbf8c0d3fa8c24ade0430fb5b",
}


def test_the_detection_configs_are_unchanged():
    for rel, digest in DETECTION_CONFIGS.items():
        assert hashlib.sha256((REPO / rel).read_bytes()).hexdigest() == digest, f"{rel} changed"


def test_the_explainer_adapter_is_thin():
    lines = (REPO / contract.EXPLAIN / "1" / "model.py").read_text().splitlines()
    assert len(lines) <= 70, f"{contract.EXPLAIN}/1/model.py has {len(lines)} lines; numerics belong in cxr"


def test_the_explainer_config_carries_its_defaults_and_one_study_per_request():
    from cxr.serving.boundary import model_parameters

    text = (REPO / contract.EXPLAIN / "config.pbtxt").read_text()
    assert f"max_batch_size: {contract.EXPLAIN_MAX_BATCH}" in text and "allow_timeout_override: true" in text
    params = {}
    for line in text.splitlines():  # parameters { key: "k" value: { string_value: "..." } }
        if line.startswith("parameters"):
            key = line.split('key: "')[1].split('"')[0]
            params[key] = {"string_value": json.loads(line.split("string_value: ", 1)[1].rsplit(" }", 2)[0])}
    settings = ExplainerSettings.from_parameters(model_parameters({"parameters": params}))
    assert settings.saliency == SaliencyConfig() and settings.postprocess == PostprocessConfig()


def test_a_new_repository_gets_the_explainer_and_the_launcher_loads_it(tmp_path):
    from cxr.export.repository import ensure_repository
    from cxr.server.install import TritonInstall
    from cxr.server.launcher import TritonServer
    from test_repository import _default_meta

    install = TritonInstall(Path("/bin/tritonserver"), Path("/lib"), Path("/backends"))
    old = TritonServer(model_repository=tmp_path).command(install)
    assert f"--load-model={contract.ENSEMBLE}" in old and f"--load-model={contract.EXPLAIN}" not in old
    ensure_repository(tmp_path, _default_meta())
    assert (tmp_path / contract.EXPLAIN / "1" / "model.py").read_text() == (REPO / contract.EXPLAIN / "1" / "model.py").read_text()
    assert f"--load-model={contract.EXPLAIN}" in TritonServer(model_repository=tmp_path).command(install)
    assert TritonServer(model_repository=tmp_path).model_names == (contract.ENSEMBLE, contract.EXPLAIN)
    assert TritonServer(model_repository=tmp_path, models=("preprocess",)).model_names == ("preprocess",)


# ------------------------------------------------------------------ request parameters and stopping


def test_saliency_overrides_apply_over_the_defaults():
    config = saliency_overrides(SaliencyConfig(), {"saliency_masks": 32, "saliency_grid": "4", "saliency_seed": 9.0})
    assert (config.masks, config.grid, config.seed, config.keep) == (32, 4, 9, 0.5)
    assert saliency_overrides(SaliencyConfig(masks=7), {}) == SaliencyConfig(masks=7)


@pytest.mark.parametrize("params,message", [
    ({"saliency_masks": 0}, r"saliency_masks\): saliency masks must be an integer in \[1, 5000\], got 0"),
    ({"saliency_grid": "x"}, "saliency_grid='x' is not a number"),
    ({"saliency_masks": 2.5}, "saliency_masks=2.5 must be an integer"),
    ({"saliency_seed": -3}, "saliency seed must be an integer"),
])
def test_bad_saliency_parameters_name_themselves(params, message):
    with pytest.raises(InvalidRequestError, match=message):
        saliency_overrides(SaliencyConfig(), params)


def test_watch_stops_a_cancelled_request_and_one_past_its_timeout():
    now = [100.0]
    cancelled = [False]
    watch = Watch(lambda: cancelled[0], 2_000_000, clock=lambda: now[0])
    watch.check(0, 10)
    now[0] += 2.5
    with pytest.raises(StepFailed, match=r"timeout of 2.0 s passed after 3 of 10 detector passes") as err:
        watch.check(3, 10)
    assert err.value.code == "CANCELLED"
    cancelled[0] = True
    with pytest.raises(StepFailed, match="the client cancelled the explanation after 4 of 10"):
        watch.check(4, 10)
    Watch(lambda: False, 0, clock=lambda: 1e12).check(1, 2)  # no timeout: never stops on time


def test_a_step_failure_is_answered_with_its_own_code(monkeypatch):
    from test_error_boundary import _pb_utils, _Request, _TritonError

    pb = _pb_utils()
    pb.TritonError = type("TritonError", (_TritonError,), {"CANCELLED": "CANCELLED"})  # Triton >= 23.10 has it

    def handle(request):
        if request.tensors["kind"].as_numpy().item() == "stop":
            raise StepFailed("the client cancelled the explanation after 3 of 17 detector passes", "CANCELLED")
        return {"OUT": np.array([1])}

    out = respond(pb, [_Request({"kind": np.array(k)}) for k in ("ok", "stop", "ok")], handle, step=contract.EXPLAIN)
    assert [None if r.error is None else r.error.code for r in out] == [None, "CANCELLED", None]
    assert str(out[1].error) == "the client cancelled the explanation after 3 of 17 detector passes"
    assert any("request answered CANCELLED" in line and "Traceback" not in line for line in pb.logged)


# ------------------------------------------------------------------ one study, driven over an async detector


class _Detector:
    """An async stand-in for the BLS call: one class-1 candidate in the middle, scored by what survives."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls, self.live, self.most_live, self.fail_on_call = [], 0, 0, fail_on_call

    async def __call__(self, batch):
        self.calls.append(len(batch))
        call = len(self.calls)
        self.live += 1
        self.most_live = max(self.most_live, self.live)
        await asyncio.sleep(0.001)
        self.live -= 1
        if call == self.fail_on_call:
            raise StepFailed("the detector model failed on a batch", "UNAVAILABLE")
        n = len(batch)
        boxes = np.tile(np.array([[24, 24, 40, 40]], np.float32), (n, 1, 1))
        score = ((batch[:, 0, 24:40, 24:40] + 2.2) / 4).reshape(n, -1).mean(1).clip(0.06, 1)[:, None]
        return boxes, score.astype(np.float32), np.ones((n, 1), np.int64), np.ones((n, 1), np.int64)


def _image():
    from cxr.serving.steps import prepare_batch
    from cxr.decode.image import decode_pixels

    images, records = prepare_batch([decode_pixels(np.full((64, 48), 3000, np.uint16), bits_stored=12)], PRE)
    return images[0], records[0]


def _run(detector, masks=40, watch=None):
    image, record = _image()
    return asyncio.run(explain_study(image, record, detector, postprocess=PostprocessConfig(),
                                     saliency=SaliencyConfig(masks=masks, grid=4), preprocess=PRE, watch=watch))


def test_one_unmasked_pass_then_masked_batches_with_two_in_flight():
    detector = _Detector()
    dets, maps = _run(detector)
    assert len(dets) == 1 and maps.shape == (1, 64, 48)
    assert detector.calls == [1, 8, 8, 8, 8, 8] and detector.most_live == IN_FLIGHT


def test_a_failed_batch_fails_the_study_after_the_batches_in_flight_came_back():
    detector = _Detector(fail_on_call=3)
    with pytest.raises(StepFailed, match="detector model failed"):
        _run(detector)
    assert detector.live == 0 and len(detector.calls) < 6


def test_a_cancelled_study_stops_between_batches():
    detector = _Detector()
    watch = Watch(lambda: len(detector.calls) >= 3)
    with pytest.raises(StepFailed, match=r"cancelled the explanation after \d+ of 41 detector passes"):
        _run(detector, watch=watch)
    assert len(detector.calls) <= 3 + IN_FLIGHT


def test_parameters_are_checked_before_the_study_is_decoded_and_one_study_per_request():
    settings = ExplainerSettings(PRE, PostprocessConfig(), SaliencyConfig(masks=8), ("A",), "v")
    garbage = np.array([b"not an image"], dtype=object)
    with pytest.raises(InvalidRequestError, match="saliency_grid"):
        asyncio.run(explain_request(garbage, None, {"saliency_grid": 0}, settings, _Detector()))
    with pytest.raises(InvalidRequestError, match="one study per explanation request, got 2"):
        asyncio.run(explain_request(np.array([b"a", b"b"], dtype=object), None, {}, settings, _Detector()))
