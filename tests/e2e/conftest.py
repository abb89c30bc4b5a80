"""A real tritonserver on free loopback ports with a tiny exported model.

The model is trained for a few steps on synthetic films (so its scores are not all
~1/9), exported to ONNX into a temporary repository, and served by the embedded
tritonserver.  The server is always torn down, even when a test fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

tritonclient = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    from cxr.training.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("e2e") / "data"
    generate(out, SynthConfig(images=16, seed=11, size=256, dicom=True), progress=False)
    return out


@pytest.fixture(scope="session")
def checkpoint(synth_data, tmp_path_factory) -> Path:
    from cxr.training.train import make_config, train

    out = tmp_path_factory.mktemp("e2e-run")
    cfg = make_config("cpu-demo", data=synth_data, out=out, size=128, epochs=2, progress=False, max_minutes=None)
    return train(cfg)


@pytest.fixture(scope="session")
def repository(checkpoint, tmp_path_factory) -> Path:
    from cxr.export.commands import run_export

    repo = tmp_path_factory.mktemp("e2e-repo") / "model_repository"
    run_export("onnx", checkpoint, repository=repo)
    return repo


@pytest.fixture(scope="session")
def server(repository):
    from cxr.server import TritonServer, free_port

    srv = TritonServer(model_repository=repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                       log_file=repository / "tritonserver.log")
    with srv:
        yield srv
    assert srv.process.poll() is not None, "tritonserver still running after teardown"


@pytest.fixture(scope="session")
def reference(checkpoint, repository):
    """The in-process pipeline: cxr preprocess -> ORT (same ONNX) -> cxr postprocess."""
    from cxr.export.runtime import OrtDetector, Pipeline
    from cxr.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    return Pipeline(OrtDetector(repository / "detector/1/model.onnx", threads=1), ckpt.preprocess, ckpt.postprocess)
