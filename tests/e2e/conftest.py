"""tests/e2e needs the serve extra; the server fixtures live in tests/conftest.py, the Mask R-CNN's
(``seg_repository``, ``seg_server``: a tiny random model whose mask logits are spread a few units
around 0, as a trained head's are) here."""

import warnings

import pytest

from cxr import contract

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")


@pytest.fixture(scope="module")
def client(server):
    """A plain tritonclient gRPC client on the session server."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.url)
    yield c
    c.close()


warnings.filterwarnings("ignore", message=".*trainable_backbone_layers.*")
SEG = dict(arch="maskrcnn_mobilenet_v2_fpn", fpn_channels=64, size=128, anchor_sizes=(16, 32, 64, 128, 256),
           rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, representation_size=64, candidates=20,
           mask_head_channels=32, mask_head_layers=2)


@pytest.fixture(scope="session")
def seg_repository(tmp_path_factory, synth_data):
    from cxr.export.commands import run_export
    from cxr.labels import get_labelset
    from cxr.preprocess import PreprocessConfig
    from cxr.training.checkpoint import Checkpoint, save_checkpoint
    from cxr.training.model import ModelConfig, build_model
    import torch

    tmp = tmp_path_factory.mktemp("seg-served")
    torch.manual_seed(3)
    cfg = ModelConfig(**SEG)
    model = build_model(cfg).eval()
    _spread_mask_logits(model, synth_data)
    ls = get_labelset("nih-bbox")
    ckpt = save_checkpoint(tmp / "seg.pt", model, Checkpoint(state={}, model_config=cfg, preprocess=PreprocessConfig(size=128),
                                                           class_names=ls.names, labelset_name=ls.name,
                                                           model_version="2026.12.04+served-seg"))
    repo = tmp / "model_repository"
    run_export("onnx", ckpt, repository=repo)
    return ckpt, repo


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


@pytest.fixture(scope="session")
def seg_server(seg_repository):
    from cxr.server.launcher import TritonServer

    _, repo = seg_repository
    srv = TritonServer.on_free_ports(repo, log_file=repo / "tritonserver.log")
    assert contract.SEGMENT in srv.model_names
    with srv:
        yield srv
