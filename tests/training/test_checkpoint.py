"""A checkpoint has one input size S: the model's, the preprocessing's and the training run's."""

from __future__ import annotations

import warnings

import pytest
import torch

from cxr.cli import main
from cxr.labels import get_labelset
from cxr.preprocess import PreprocessConfig
from cxr.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cxr.training.model import ModelConfig, build_model

warnings.filterwarnings("ignore", message=".*trainable_backbone_layers.*")

TINY = dict(arch="fasterrcnn_mobilenet_v3_large_fpn", size=128, representation_size=32)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    cfg = ModelConfig(**TINY)
    ls = get_labelset("nih-bbox")
    ckpt = Checkpoint({}, cfg, PreprocessConfig(size=128), ls.names, ls.name, meta={"train_config": {"size": 128}})
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "good.pt", build_model(cfg), ckpt)


def _edited(good, path, **sizes):
    """``good`` with the ``size`` of the named metadata blocks changed, written as ``path``."""
    obj = torch.load(good, weights_only=True)
    for block, size in sizes.items():
        obj["meta"][block]["size"] = size
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("sizes, named", [
    (dict(preprocess=256), ("model size 128", "preprocess size 256")),
    (dict(model=256), ("model size 256", "preprocess size 128")),
    (dict(train_config=800), ("train_config size 800", "model size 128")),
])
def test_a_checkpoint_whose_sizes_disagree_is_refused_on_load(good, tmp_path, sizes, named):
    path = _edited(good, tmp_path / "bad.pt", **sizes)
    with pytest.raises(ValueError, match="input size") as err:
        load_checkpoint(path)
    for text in (*named, str(path)):
        assert text in str(err.value)


def test_the_cli_reports_the_disagreement_as_a_user_error(good, tmp_path, capsys):
    path = _edited(good, tmp_path / "bad.pt", preprocess=256)
    assert main(["export", "onnx", "--checkpoint", str(path), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "model size 128" in err and "preprocess size 256" in err and "Traceback" not in err


def test_a_checkpoint_without_a_training_config_loads(good, tmp_path):
    obj = torch.load(good, weights_only=True)
    del obj["meta"]["train_config"]
    torch.save(obj, tmp_path / "plain.pt")
    ckpt = load_checkpoint(tmp_path / "plain.pt")
    assert ckpt.model_config.size == ckpt.preprocess.size == 128


def test_saving_disagreeing_sizes_fails_before_writing(tmp_path):
    cfg = ModelConfig(**TINY)
    ls = get_labelset("nih-bbox")
    with pytest.raises(ValueError, match="model size 128, preprocess size 256"):
        save_checkpoint(tmp_path / "m.pt", build_model(cfg), Checkpoint({}, cfg, PreprocessConfig(size=256), ls.names, ls.name))
    assert not list(tmp_path.iterdir())


def test_the_serving_graph_takes_its_size_from_the_checkpoint(good):
    from cxr.export.graph import ServingGraph

    graph = ServingGraph.from_checkpoint(load_checkpoint(good))
    assert graph.size == 128 and not graph.training
