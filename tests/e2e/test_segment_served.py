"""A Mask R-CNN served by the real embedded tritonserver: ``cxr_segment`` returns the in-process
pipeline's detections and masks pixel for pixel (the wire form of cxr.contract), ``cxr_detector``
of the same repository is unchanged, bad input fails alone.

The model is tiny, random and deterministic (its mask logits spread a few units around 0, as a
trained head's are, so that masks are neither empty nor full): this checks the plumbing and the
frames, not accuracy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cxr import contract
from cxr.masks import CroppedMasks, crop_iou, wire_size

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def seg_client(seg_server):
    c = grpcclient.InferenceServerClient(seg_server.url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def seg_reference(seg_repository):
    from cxr.serving.pipeline import Pipeline
    from cxr.serving.runtime import OrtDetector
    from cxr.training.checkpoint import load_checkpoint

    ckpt_path, repo = seg_repository
    ckpt = load_checkpoint(ckpt_path)
    return Pipeline(OrtDetector(repo / contract.Artifact.ONNX.path, threads=1), ckpt.preprocess, ckpt.postprocess)


@pytest.fixture(scope="module")
def films(synth_data, real_cr_files):
    pngs = sorted((synth_data / "images").glob("*.png"))[:4]
    dicoms = sorted((synth_data / "dicom").glob("*.dcm"))[:2]
    return [p.read_bytes() for p in pngs + dicoms] + [real_cr_files[0].read_bytes()]


def _infer(client, data: bytes, model: str = contract.SEGMENT, outputs=contract.SEGMENT_OUTPUTS, params=None):
    inp = grpcclient.InferInput(contract.IMAGE_BYTES.name, [1, 1], contract.IMAGE_BYTES.wire_dtype)
    inp.set_data_from_numpy(np.array([[data]], dtype=object))
    return client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(t.name) for t in outputs],
                        parameters=params, client_timeout=120)


def _served_masks(result) -> CroppedMasks:
    """The wire form back to masks, as a client reads it (N = the unpadded detections)."""
    n = int((result.as_numpy(contract.SCORES.name)[0] >= 0).sum())
    rects = result.as_numpy(contract.MASK_RECTS.name)[0][:n]
    bits = result.as_numpy(contract.MASK_BITS.name)[0]
    height, width = (int(v) for v in result.as_numpy(contract.MASK_GRID.name)[0])
    assert not bits[wire_size(rects):].any(), "bytes after the masks are padding"
    return CroppedMasks.from_wire(rects, bits[: wire_size(rects)], height, width)


def test_cxr_segment_equals_the_in_process_pipeline_pixel_for_pixel(seg_client, seg_reference, films, seg_repository):
    _, repo = seg_repository
    classes = json.loads((repo / "cxr-metadata.json").read_text())["class_names"]
    local = seg_reference(films, batch_size=1)
    assert sum(len(d) for d in local) > 0, "the tiny model should detect something"
    assert any(ref.masks.mask(i).any() for ref in local for i in range(len(ref))), "and draw some mask"
    for data, ref in zip(films, local):
        result = _infer(seg_client, data)
        masks = _served_masks(result)
        np.testing.assert_allclose(result.as_numpy(contract.BOXES.name)[0][: len(ref)], ref.boxes, atol=1e-3)
        assert [x.decode() for x in result.as_numpy(contract.LABELS.name)[0]] == [classes[c - 1] for c in ref.labels]
        assert (masks.height, masks.width) == (ref.masks.height, ref.masks.width)  # the ORIGINAL film's grid
        np.testing.assert_array_equal(masks.rects, ref.masks.rects)
        assert all(crop_iou(masks, i, ref.masks, i) == 1.0 for i in range(len(ref)))
        wire = sum(result.as_numpy(t.name).nbytes for t in (contract.MASK_RECTS, contract.MASK_BITS, contract.MASK_GRID))
        assert wire <= contract.mask_wire_bound(len(ref), masks.height, masks.width)


def test_the_detection_ensemble_of_a_mask_repository_is_unchanged(seg_client, films, seg_repository):
    from cxr.export.triton_config import render

    _, repo = seg_repository
    meta = json.loads((repo / "cxr-metadata.json").read_text())
    for data in films[:3]:
        seg = _infer(seg_client, data)
        det = _infer(seg_client, data, model=contract.ENSEMBLE, outputs=contract.ENSEMBLE_OUTPUTS)
        for t in (contract.BOXES, contract.SCORES, contract.LABELS):
            np.testing.assert_array_equal(det.as_numpy(t.name), seg.as_numpy(t.name))
    plain = render({**meta, "task": "detect", "model": meta["model"]})
    for rel in (f"{contract.ENSEMBLE}/config.pbtxt", f"{contract.Step.POSTPROCESS}/config.pbtxt"):
        assert (repo / rel).read_text() == plain[rel]


def test_top_k_and_threshold_bound_the_masks(seg_client, films):
    one = _infer(seg_client, films[0], params={"top_k": 1, "score_threshold": 0.0})
    assert len(_served_masks(one)) == 1
    none = _infer(seg_client, films[0], params={"score_threshold": 1.0})
    empty = _served_masks(none)
    assert len(empty) == 0 and none.as_numpy(contract.MASK_BITS.name).shape[-1] == 0


@pytest.mark.parametrize("bad, message", [(b"", "empty input"), (b"GIF89a not a radiograph", "unrecognised image format")])
def test_bad_input_fails_only_its_request(seg_client, films, bad, message):
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(3) as pool:
        good = [pool.submit(_infer, seg_client, f) for f in films[:2]]
        wrong = pool.submit(_infer, seg_client, bad)
        with pytest.raises(InferenceServerException) as err:
            wrong.result()
        assert "INVALID_ARG" in str(err.value.status()) and message in err.value.message()
        assert all(f.result().as_numpy(contract.MASK_GRID.name).shape == (1, 2) for f in good)


def test_the_sdk_returns_each_detections_mask(seg_server, seg_reference, films):
    from cxr.client import DetectorClient

    local = seg_reference(films[-3:], batch_size=1)
    with DetectorClient(url=seg_server.url, model_name=contract.SEGMENT) as client:
        results = [client.predict(f) for f in films[-3:]]  # synth DICOMs and pydicom's real CR
    for result, ref in zip(results, local):
        assert len(result.detections) == len(ref) > 0
        for i, det in enumerate(result.detections):
            assert det.mask is not None and det.mask.image_size == result.image_size
            np.testing.assert_array_equal(det.mask.full(), ref.masks.mask(i))
            assert det.to_dict()["mask"]["area_px"] == int(ref.masks.mask(i).sum())
    with DetectorClient(url=seg_server.url) as client:  # cxr_detector: the same boxes, no masks
        plain = client.predict(films[-1])
    assert plain.detections == results[-1].detections and all(d.mask is None for d in plain.detections)
