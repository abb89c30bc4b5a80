"""A checkpoint trained from the ImageNet backbone serves with the normalisation it was trained with.

ImageNet weights expect ImageNet's mean/std on three channels; serving runs the preprocessing
stored in the checkpoint.  Here: train from the real MobileNetV2 file, export, serve with the
embedded Triton server, send the film's bytes, and get the detections the training code's own
path (DetectionDataset -> model -> postprocess) gives -- while the same model fed another
normalisation gives other answers, so the comparison can tell."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from cxr.export.parity import Tolerance, compare
from cxr.postprocess import DetectionArrays
from cxr.preprocess import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.e2e
SAME = Tolerance(min_match_rate=1.0, match_iou=0.99, report_score=0.05, score_margin=1e-4)


@pytest.fixture(scope="module")
def pretrained(imagenet_weights, synth_data, tmp_path_factory):
    from cxr.export.commands import run_export
    from cxr.training.config import make_config
    from cxr.training.train import train

    out = tmp_path_factory.mktemp("pretrained-run")
    best = train(make_config("cpu-demo", data=synth_data, out=out, size=128, epochs=1, progress=False, max_minutes=None))
    repo = tmp_path_factory.mktemp("pretrained-repo") / "model_repository"
    run_export("onnx", best, repository=repo)
    return best, repo


@pytest.fixture(scope="module")
def served(pretrained):
    from cxr.server.launcher import TritonServer

    _, repo = pretrained
    with TritonServer.on_free_ports(repo, log_file=repo / "tritonserver.log") as srv:
        client = grpcclient.InferenceServerClient(srv.url)
        yield client
        client.close()


def _studies(synth_data):
    from cxr.labels import get_labelset
    from cxr.training.annotations import NIHDataset

    return NIHDataset.from_dir(synth_data, labelset=get_labelset("nih-bbox").name, require_images=True).detection_studies()[:6]


def _served(client, path, class_names) -> DetectionArrays:
    inp = grpcclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[path.read_bytes()]], dtype=object))
    r = client.infer("cxr_detector", [inp], client_timeout=120)
    labels = np.array([class_names.index(x.decode()) + 1 for x in r.as_numpy("LABELS")[0]], np.int64)
    return DetectionArrays(r.as_numpy("BOXES")[0], r.as_numpy("SCORES")[0], labels)


def test_served_detections_equal_the_training_path(pretrained, served, synth_data):
    from torch.utils.data import DataLoader

    from cxr.training.checkpoint import load_checkpoint
    from cxr.training.engine import predict
    from cxr.training.torch_dataset import DetectionDataset, collate

    best, repo = pretrained
    ckpt = load_checkpoint(best)
    assert ckpt.meta["weights"]["name"] == "mobilenet_v2"
    assert ckpt.preprocess.channels == 3 and ckpt.preprocess.mean == IMAGENET_MEAN and ckpt.preprocess.std == IMAGENET_STD
    from cxr.export.onnx_export import read_metadata

    served_meta = json.loads((repo / "cxr-metadata.json").read_text())
    artifact = read_metadata(repo / "detector/1/model.onnx")
    assert served_meta["preprocess"] == artifact["preprocess"] == ckpt.preprocess.to_dict()
    assert artifact["weights"]["sha256"] == ckpt.meta["weights"]["sha256"]  # the artifact says what initialised it

    studies = _studies(synth_data)
    loader = DataLoader(DetectionDataset(studies, ckpt.labelset, ckpt.preprocess), batch_size=2, collate_fn=collate)
    import torch

    local = [DetectionArrays(p["boxes"], p["scores"], p["labels"])
             for p in predict(ckpt.build_model(), loader, torch.device("cpu"), postprocess_config=ckpt.postprocess, progress=False)]
    remote = [_served(served, s.path, list(ckpt.class_names)) for s in studies]
    assert sum(len(d) for d in local) > 0, "the pretrained model should detect something"
    report = compare(local, remote, tolerance=SAME)
    assert report.passed and report.matched == report.n_ref == report.n_test, report.table()


def test_another_normalisation_would_change_the_answers(pretrained, served, synth_data):
    """The check above can fail: the same network fed unnormalised [0, 1] pixels answers otherwise."""
    from dataclasses import replace

    from cxr.serving.pipeline import Pipeline
    from cxr.export.torch_detector import TorchDetector
    from cxr.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(pretrained[0])
    wrong = replace(ckpt.preprocess, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    studies = _studies(synth_data)
    local = Pipeline(TorchDetector(ckpt), wrong, ckpt.postprocess)([s.path for s in studies], batch_size=2)
    remote = [_served(served, s.path, list(ckpt.class_names)) for s in studies]
    assert not compare(local, remote, tolerance=SAME).passed
