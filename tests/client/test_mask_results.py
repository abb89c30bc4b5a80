"""The client's side of the mask wire form: what ``segment_postprocess`` encodes
(cxr.serving.steps, the server's own code) read back into each Detection's Mask, and the
answers that cannot be this study's refused.  The live round trip is tests/e2e/test_segment_served.py."""

from __future__ import annotations

import numpy as np
import pytest

from cxr import contract
from cxr.client.errors import DetectorError
from cxr.client.requests import ModelSpec, Request, parse_response
from cxr.masks import CroppedMasks
from cxr.postprocess import DetectionArrays
from cxr.serving.steps import detection_tensors, mask_tensors

CLASSES = ["Effusion", "Nodule"]


class Outputs(dict):
    """A response as tritonclient presents one: ``as_numpy(name)``."""

    def as_numpy(self, name):
        return self.get(name)


def _spec(outputs) -> ModelSpec:
    config = {"max_batch_size": 8, "output": [{"name": t.name} for t in outputs],
              "input": [{"name": t.name, "data_type": t.dtype} for t in contract.ENSEMBLE_INPUTS]}
    return ModelSpec.from_config(config, contract.SEGMENT)


def _served(masks: np.ndarray) -> Outputs:
    n = len(masks)
    dets = DetectionArrays(np.tile(np.array([[2, 3, 40, 30]], np.float32), (n, 1)), np.linspace(0.9, 0.4, n).astype(np.float32),
                           np.arange(n, dtype=np.int64) % 2 + 1, masks=CroppedMasks.from_masks(masks))
    return Outputs({**detection_tensors([dets], CLASSES), **mask_tensors([dets])})


def test_each_detection_gets_its_mask_in_the_studys_grid():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 48, 64)) > 0.7
    result = parse_response(_served(masks), Request((), {}, (48, 64)), _spec(contract.SEGMENT_OUTPUTS),
                            model_name=contract.SEGMENT, model_version="", latency_ms=1.0)
    assert [d.label for d in result.detections] == ["Effusion", "Nodule", "Effusion"]
    for d, m in zip(result.detections, masks):
        np.testing.assert_array_equal(d.mask.full(), m)
        assert d.mask.area == int(m.sum()) and d.to_dict()["mask"]["area_px"] == int(m.sum())
    plain = parse_response(_served(masks), Request((), {}, (48, 64)), _spec(contract.ENSEMBLE_OUTPUTS),
                           model_name=contract.ENSEMBLE, model_version="", latency_ms=1.0)
    assert all(d.mask is None for d in plain.detections) and "mask" not in plain.detections[0].to_dict()
    assert plain.detections == result.detections  # a mask is not part of a detection's equality


def test_masks_that_cannot_be_this_studys_are_refused():
    served = _served(np.ones((1, 48, 64), bool))
    with pytest.raises(DetectorError, match="masks are on a 48x64 grid, the study is 48x65"):
        parse_response(served, Request((), {}, (48, 65)), _spec(contract.SEGMENT_OUTPUTS),
                       model_name=contract.SEGMENT, model_version="", latency_ms=1.0)
    served[contract.MASK_BITS.name] = served[contract.MASK_BITS.name][:, :-1]
    with pytest.raises(DetectorError, match="do not decode"):
        parse_response(served, Request((), {}, (48, 64)), _spec(contract.SEGMENT_OUTPUTS),
                       model_name=contract.SEGMENT, model_version="", latency_ms=1.0)
