"""Shared fixtures: the real reference files that installed packages ship, and a live
tritonserver with a tiny exported model (session-scoped, shared by tests/e2e and
tests/client so the model is trained and served once per run).

The server fixtures import tritonclient / pytriton lazily: test modules that use
them skip themselves when those are not installed (a client-only install)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pydicom_test_files() -> Path:
    """pydicom's shipped test files (listed directly: get_testdata_files would try the network)."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="session")
def real_cr_files(pydicom_test_files) -> list[Path]:
    """Real CR MONOCHROME1 DICOM images from pydicom's dicomdirtests."""
    files = sorted((pydicom_test_files / "dicomdirtests" / "77654033").glob("CR*/*"))
    assert files, "pydicom no longer ships its CR test images"
    return files



@pytest.fixture(scope="session")
def imagenet_weights():
    """torchvision's ImageNet MobileNetV2 file from the weights cache (`make test`'s set-up fetches it).

    Without it these tests skip, naming the command -- unless CXR_REQUIRE_WEIGHTS=1 (set by
    `make test`) or CI=true (as for the DICOM peers), where a missing file fails them."""
    import os

    from cxr.errors import UsageError
    from cxr.training.weights import resolve

    try:
        return resolve("imagenet", arch="fasterrcnn_mobilenet_v2_fpn")
    except UsageError as exc:
        if os.environ.get("CXR_REQUIRE_WEIGHTS") == "1" or os.environ.get("CI") == "true":
            pytest.fail(f"CXR_REQUIRE_WEIGHTS=1 or CI=true, but {exc}")
        pytest.skip(f"needs the ImageNet weights: run `cxr weights fetch mobilenet_v2` ({exc})")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    from cxr.training.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("e2e") / "data"
    generate(out, SynthConfig(images=16, seed=11, size=256, dicom=True), progress=False)
    return out


@pytest.fixture(scope="session")
def checkpoint(synth_data, tmp_path_factory) -> Path:
    from cxr.training.config import make_config
    from cxr.training.train import train

    out = tmp_path_factory.mktemp("e2e-run")
    # From scratch: the served-model tests must not depend on the weights cache (tests/e2e/test_pretrained_served.py does).
    cfg = make_config("cpu-demo", data=synth_data, out=out, size=128, epochs=2, progress=False, max_minutes=None, weights="none")
    return train(cfg)


@pytest.fixture(scope="session")
def repository(checkpoint, tmp_path_factory) -> Path:
    from cxr.export.commands import run_export

    repo = tmp_path_factory.mktemp("e2e-repo") / "model_repository"
    run_export("onnx", checkpoint, repository=repo)
    return repo


@pytest.fixture(scope="session")
def server(repository):
    pytest.importorskip("pytriton")
    from cxr.server.launcher import TritonServer

    srv = TritonServer.on_free_ports(repository, log_file=repository / "tritonserver.log")
    with srv:
        yield srv
    assert srv.process.poll() is not None, "tritonserver still running after teardown"


@pytest.fixture(scope="session")
def reference(checkpoint, repository):
    """The in-process pipeline: cxr preprocess -> ORT (same ONNX) -> cxr postprocess."""
    from cxr.serving.pipeline import Pipeline
    from cxr.serving.runtime import OrtDetector
    from cxr.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    return Pipeline(OrtDetector(repository / "detector/1/model.onnx", threads=1), ckpt.preprocess, ckpt.postprocess)


SEG = dict(arch="maskrcnn_mobilenet_v2_fpn", fpn_channels=64, size=128, anchor_sizes=(16, 32, 64, 128, 256),
           rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, representation_size=64, candidates=20,
           mask_head_channels=32, mask_head_layers=2)


@pytest.fixture(scope="session")
def seg_checkpoint(tmp_path_factory, synth_data) -> Path:
    """A tiny random Mask R-CNN (MobileNetV2-FPN at 128 px) as a segment checkpoint, its mask logits spread a
    few units around 0 as a trained head's are (masks neither empty nor full): for plumbing, not accuracy."""
    from cxr.labels import get_labelset
    from cxr.preprocess import PreprocessConfig
    from cxr.training.checkpoint import Checkpoint, save_checkpoint
    from cxr.training.model import ModelConfig, build_model
    import torch

    tmp = tmp_path_factory.mktemp("seg-model")
    torch.manual_seed(3)
    cfg = ModelConfig(**SEG)
    model = build_model(cfg).eval()
    _spread_mask_logits(model, synth_data)
    ls = get_labelset("nih-bbox")
    return save_checkpoint(tmp / "seg.pt", model, Checkpoint(state={}, model_config=cfg, preprocess=PreprocessConfig(size=128),
                                                           class_names=ls.names, labelset_name=ls.name,
                                                           model_version="2026.12.04+served-seg"))


def _spread_mask_logits(model, synth_data) -> None:
    """A random mask head answers nearly the same logit everywhere (all masks empty or all full):
    scale its last layer and centre each class's logits on a synthetic film, so that about half
    of each 28 x 28 mask is set, with logits a few units away from 0 as a trained head's are."""
    import numpy as np
    import torch
    from PIL import Image

    film = sorted((synth_data / "images").glob("*.png"))[0]
    x = torch.from_numpy(np.asarray(Image.open(film).convert("L").resize((128, 128)), dtype=np.float32) / 255)
    head, logits = model.roi_heads.mask_predictor.mask_fcn_logits, {}
    hook = model.roi_heads.mask_predictor.register_forward_hook(lambda m, i, o: logits.__setitem__("o", o))
    with torch.no_grad():
        head.weight.mul_(3000.0)
        head.bias.mul_(100.0)
        model([x[None].expand(3, -1, -1)])
        head.bias.sub_(logits["o"].transpose(0, 1).flatten(1).median(dim=1).values)
    hook.remove()


@pytest.fixture
def sr_and_gsps_pass_dciodvfy(monkeypatch, tmp_path_factory):
    """Every SR and GSPS built in this process while the test runs -- by cxr.client.dicom_out,
    called directly, by `cxr predict` or inside the PACS bridge's worker thread -- goes through
    dicom3tools' dciodvfy when the test ends: 0 errors, and only the warnings client/README.md
    lists.  Objects built in other processes are checked where they arrive (the peer tests).

    Every test under tests/client uses it (tests/client/conftest.py); a test elsewhere that
    builds SR or GSPS names it (tests/e2e/test_security.py, whose PACS bridge sends an SR).
    The objects are recorded where highdicom constructs them, not where our builders are
    looked up, so a builder imported by name before the test began is seen too.  Yields the
    list of recorded objects."""
    built: list = []
    try:
        import highdicom as hd
    except ImportError:  # a client-less install: nothing here builds DICOM outputs
        yield built
        return

    def recording(init):
        def wrapper(self, *args, **kwargs):
            init(self, *args, **kwargs)
            built.append(self)  # list.append is atomic: the bridge's worker thread appends too

        return wrapper

    for cls in (hd.sr.Comprehensive3DSR, hd.pr.GrayscaleSoftcopyPresentationState):
        monkeypatch.setattr(cls, "__init__", recording(cls.__init__))
    yield built
    import os
    import shutil

    if not built or (shutil.which("dciodvfy") is None and os.environ.get("CI") != "true"):
        return  # without dicom3tools only the peer tests (which skip) say so; under CI=true need() fails
    from peers import assert_valid_iod, need

    need("dciodvfy")
    folder = tmp_path_factory.mktemp("dciodvfy")
    for i, ds in enumerate(built):
        path = folder / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert_valid_iod(path)


@pytest.fixture(scope="module")
def viewer():
    """Orthanc + OHIF as ``cxr viewer serve`` runs them (tests/ohif_page.py: the prepared build, or skip/fail)."""
    from browser import need_chromium
    from ohif_page import need_viewer

    from cxr.client.viewer import ViewerServer
    from cxr.server.net import stable_port

    build = need_viewer()
    need_chromium()
    with ViewerServer(build, port=stable_port()) as server:
        yield server


@pytest.fixture(scope="module")
def page(viewer):
    """A headless Chromium page (tests/browser.py) for the module's viewer."""
    from browser import Browser

    with Browser(width=1200, height=800) as browser:
        yield browser
