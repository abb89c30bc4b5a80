"""Serving graph, ONNX / INT8 export, parity and repository placement on a tiny model."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from cxr.labels import get_labelset
from cxr.postprocess import postprocess
from cxr.preprocess import PreprocessConfig
from cxr.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from cxr.training.model import ModelConfig, build_model

warnings.filterwarnings("ignore", message=".*trainable_backbone_layers.*")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from cxr.export.commands import ParityError, check_parity, run_export  # noqa: E402
from cxr.export.graph import ServingGraph  # noqa: E402
from cxr.export.onnx_export import export_onnx, read_metadata  # noqa: E402
from cxr.export.parity import TOLERANCES  # noqa: E402
from cxr.export.repository import RepositoryConflict, read_repository_metadata  # noqa: E402
from cxr.export.torch_detector import TorchDetector  # noqa: E402
from cxr.serving.runtime import OrtDetector

TINY = dict(arch="fasterrcnn_mobilenet_v3_large_fpn", size=128, anchor_sizes=(16, 32, 64, 128, 256),
            rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50, representation_size=64, candidates=60)


def _checkpoint(tmp_path, name="m.pt", seed=0, version="2026.01.01+tiny", **overrides):
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**TINY, **overrides})
    model = build_model(cfg).eval()
    ls = get_labelset("nih-bbox")
    ckpt = Checkpoint(state={}, model_config=cfg, preprocess=PreprocessConfig(size=cfg.size), class_names=ls.names,
                      labelset_name=ls.name, model_version=version)
    return save_checkpoint(tmp_path / name, model, ckpt)


def _films(n, size=128, seed=0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, 3, size, size)).astype(np.float32) * 0.5
    x[:, :, 30:70, 40:90] += 2.0  # something for the detector to look at
    return x


def assert_same_candidates(ref, test, n, *, score_tol, box_tol):
    """Rows of the reference (boxes, scores, labels) have a twin in ``test``.

    A random-weight model scores everything ~1/9 and gives exact ties (identical
    ROI features), which any top-k orders arbitrarily: compare as sets, and leave
    out rows tied with the smallest kept score, since the top-k cut may have
    picked other members of that tie group.
    """
    rb, rs, rl = (np.asarray(a)[:n] for a in ref)
    tb, ts, tl = (np.asarray(a)[:n] for a in test)
    rows = np.flatnonzero(rs > rs.min() + score_tol) if n else []
    assert len(rows) >= min(n, 10) * 0.5, f"too few rows above the tie at the cut: {len(rows)} of {n}"
    for i in rows:
        same = np.flatnonzero(tl == rl[i])
        assert same.size, f"row {i}: no candidate of label {rl[i]}"
        dist = np.abs(tb[same] - rb[i]).max(1) + np.abs(ts[same] - rs[i]) * 1e3
        j = same[np.argmin(dist)]
        assert np.abs(tb[j] - rb[i]).max() <= box_tol and abs(ts[j] - rs[i]) <= score_tol, (i, rb[i], tb[j], rs[i], ts[j])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    path = _checkpoint(tmp)
    ckpt = load_checkpoint(path)
    return ckpt, export_onnx(ckpt, tmp / "model.onnx"), path


# Every FPN spreads ROIs over several levels (NonZero/ScatterND path): MobileNets over strides 8-32, ResNets 4-32.
@pytest.mark.parametrize("arch", ["fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v2_fpn", "fasterrcnn_resnet18_fpn"])
def test_serving_graph_equals_the_torchvision_model(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**TINY, "arch": arch})).eval()
    graph = ServingGraph(model, 128).eval()
    x = torch.from_numpy(_films(3))
    with torch.no_grad():
        ref = model(list(x))
        boxes, scores, labels, valid = graph(x)
    for i, r in enumerate(ref):
        n = int(valid[i])
        assert n == len(r["scores"]) > 0
        assert_same_candidates((r["boxes"], r["scores"], r["labels"]), (boxes[i], scores[i], labels[i]), n,
                               score_tol=1e-6, box_tol=1e-4)


def test_onnx_batch4_equals_four_batch1(exported):
    _, path, _ = exported
    det = OrtDetector(path, threads=1)
    x = _films(4, seed=1)
    b4 = det(x)
    for i in range(4):
        b1 = det(x[i : i + 1])
        n = int(b1[3][0])
        assert n == int(b4[3][i])
        assert_same_candidates((b1[0][0], b1[1][0], b1[2][0]), (b4[0][i], b4[1][i], b4[2][i]), n, score_tol=1e-5, box_tol=1e-3)


def test_onnx_equals_pytorch(exported):
    ckpt, path, _ = exported
    x = _films(2, seed=2)
    o, r = OrtDetector(path, threads=1)(x), TorchDetector(ckpt)(x)
    for i in range(2):
        n = int(r[3][i])
        assert int(o[3][i]) == n
        assert_same_candidates((r[0][i], r[1][i], r[2][i]), (o[0][i], o[1][i], o[2][i]), n, score_tol=1e-4, box_tol=1e-2)


@pytest.mark.parametrize("arch", ["fasterrcnn_resnet18_fpn", "fasterrcnn_mobilenet_v2_fpn"])
def test_multilevel_onnx_batch_equals_pytorch_per_image(tmp_path, arch):
    """ROIs pooled on several levels (NonZero/ScatterND in ONNX), batch of 3: ResNet-18 FPN (strides 4-32)
    and MobileNetV2 FPN (strides 8-32)."""
    path = _checkpoint(tmp_path, arch=arch, seed=3)
    ckpt = load_checkpoint(path)
    graph = ServingGraph(build_model(ckpt.model_config).eval(), 128)
    assert graph.mapper.k_max > graph.mapper.k_min, "the test needs ROIs on several levels"
    onnx_path = export_onnx(ckpt, tmp_path / "multilevel.onnx")
    # Each ROI pools on its own level only: one RoiAlign per level, over the ROIs selected for it
    # (rois[NonZero(level == l)]), not every ROI on every level.
    nodes = onnx.load(str(onnx_path)).graph.node
    producer = {out: n for n in nodes for out in n.output}

    def ancestors(name):
        seen, todo = set(), [name]
        while todo:
            node = producer.get(todo.pop())
            if node is not None and id(node) not in seen:
                seen.add(id(node))
                yield node.op_type
                todo.extend(node.input)

    aligns = [n for n in nodes if n.op_type == "RoiAlign"]
    assert len(aligns) == len(graph.pool_names) > 1
    assert all("NonZero" in set(ancestors(n.input[1])) for n in aligns), "a level pools ROIs not selected for it"
    x = _films(3, seed=4)
    o, r = OrtDetector(onnx_path, threads=1)(x), TorchDetector(ckpt)(x)
    for i in range(3):
        one = TorchDetector(ckpt)(x[i : i + 1])
        n = int(r[3][i])
        assert int(o[3][i]) == int(one[3][0]) == n > 0
        assert_same_candidates((one[0][0], one[1][0], one[2][0]), (o[0][i], o[1][i], o[2][i]), n, score_tol=1e-4, box_tol=1e-2)


def test_metadata_round_trips(exported):
    ckpt, path, _ = exported
    meta = read_metadata(path)
    assert meta["precision"] == "fp32" and meta["opset"] == 17
    for key, value in ckpt.metadata().items():
        assert meta[key] == json.loads(json.dumps(value)), key


def test_onnx_graph_checks_and_has_dynamic_batch(exported):
    _, path, _ = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value
    assert any(n.op_type == "NonMaxSuppression" for n in model.graph.node)


def test_empty_output_is_valid(tmp_path):
    ckpt = load_checkpoint(_checkpoint(tmp_path))
    ckpt.model_config = ModelConfig(**{**TINY, "candidate_score_threshold": 0.999})  # nothing can pass
    path = export_onnx(ckpt, tmp_path / "empty.onnx")
    boxes, scores, labels, valid = OrtDetector(path, threads=1)(_films(2))
    assert valid.tolist() == [0, 0] and boxes.shape == (2, 60, 4)
    from cxr.boxes import LetterboxRecord

    dets = postprocess(boxes[0], scores[0], labels[0], LetterboxRecord.fit(512, 512, 128), valid_count=int(valid[0]))
    assert len(dets) == 0 and dets.boxes.shape == (0, 4)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from cxr.training.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("synth") / "data"
    generate(out, SynthConfig(images=14, seed=9, size=256), progress=False)
    return out


def test_parity_passes_for_the_same_model(exported, tiny_data):
    ckpt, path, _ = exported
    from cxr.export.commands import _studies

    report = check_parity(ckpt, OrtDetector(path, threads=1), _studies(tiny_data, "test", 4, "nih-bbox"),
                          tolerance=TOLERANCES["fp32"])
    # a random tiny model scores ~1/9 everywhere: compare at its own operating point
    assert report.passed, report.table()


def test_parity_fails_loudly_on_a_perturbed_model(tmp_path, tiny_data):
    from dataclasses import replace

    from cxr.export.commands import _studies

    ckpt = load_checkpoint(_checkpoint(tmp_path, seed=0))
    perturbed = replace(ckpt, state={k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in ckpt.state.items()})
    path = export_onnx(perturbed, tmp_path / "bad.onnx")
    tol = replace(TOLERANCES["fp32"], report_score=0.0)  # every candidate counts
    report = check_parity(ckpt, OrtDetector(path, threads=1), _studies(tiny_data, "test", 3, "nih-bbox"), tolerance=tol)
    assert not report.passed
    err = ParityError(report)
    assert "FAIL" in str(err) and "worst images" in str(err) and "match rate" in str(err)


def test_export_into_repository_refuses_another_model(exported, tmp_path, tiny_data):
    _, _, ckpt_path = exported
    repo = tmp_path / "repo"
    res = run_export("onnx", ckpt_path, repository=repo)
    assert res.path == repo / "detector/1/model.onnx" and res.path.is_file()
    meta = read_repository_metadata(repo)
    assert meta["model_version"] == "2026.01.01+tiny" and "onnx" in meta["artifacts"]
    run_export("onnx", ckpt_path, repository=repo)  # same model again: fine

    other = _checkpoint(tmp_path, name="other.pt", seed=1, version="2026.02.02+other")
    with pytest.raises(RepositoryConflict, match="another model .*model_version.*--force"):
        run_export("onnx", other, repository=repo)
    run_export("onnx", other, repository=repo, force=True)
    assert read_repository_metadata(repo)["model_version"] == "2026.02.02+other"


def test_int8_quantization(exported, tmp_path, tiny_data, monkeypatch):
    _, _, ckpt_path = exported
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    res = run_export("onnx-int8", ckpt_path, out=tmp_path / "m.int8.onnx", data=tiny_data, calibration_images=4, int8_budget=None)
    # ONNX Runtime's failed symbolic shape inference dumps a model + <uuid>.data of all weights into the cwd
    assert not list(cwd.iterdir()), f"quantization left files in the working directory: {sorted(cwd.iterdir())}"
    model = onnx.load(str(res.path))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert read_metadata(res.path)["precision"] == "int8"
    boxes, scores, labels, valid = OrtDetector(res.path, threads=1)(_films(2))
    assert boxes.shape == (2, 60, 4) and valid.shape == (2,)


def test_check_without_data_is_a_clear_error(exported):
    _, _, ckpt_path = exported
    with pytest.raises(ValueError, match="--check needs --data"):
        run_export("onnx", ckpt_path, repository=None, out="x.onnx", check=True)


def _int8_groups(path) -> set[str]:
    """Layer groups of an INT8 model whose Conv/Gemm weights arrive through DequantizeLinear."""
    from cxr.export.quantize import QUANTIZED_OPS, node_group

    model = onnx.load(str(path))
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {node_group(n.name) for n in model.graph.node if n.op_type in QUANTIZED_OPS and len(n.input) > 1 and n.input[1] in dq}


def test_node_groups_follow_module_paths():
    from cxr.export.quantize import node_group

    assert node_group("/backbone/body/body.6/block/block.1/block.1.0/Conv") == "backbone.body.6"
    assert node_group("/backbone/body/layer2/layer2.0/conv1/Conv") == "backbone.layer2"
    assert node_group("/backbone/fpn/inner_blocks.1/inner_blocks.1.0/Conv") == "backbone.fpn"
    assert node_group("/rpn_head/cls_logits_1/Conv") == "rpn_head"
    assert node_group("/box_head/fc6/Gemm") == "box_head"


def test_int8_mixed_precision_keeps_the_sensitive_group_fp32(exported, tmp_path, tiny_data):
    """The search quantizes every group except one whose (measured) damage is over budget."""
    from cxr.export.commands import _studies, calibration_batches
    from cxr.export.quantize import quantize_int8

    ckpt, fp32, _ = exported
    cost = {"backbone.fpn": 0.5, "box_head": 0.04, "rpn_head": 0.03}  # per group, as if measured; others 0

    def evaluate(path):
        return sum(cost.get(g, 0.0) for g in _int8_groups(path))

    calib = calibration_batches(ckpt, _studies(tiny_data, "train", 2, "nih-bbox"))
    out = quantize_int8(fp32, tmp_path / "mixed.onnx", calib, evaluate=evaluate, budget=0.1)
    mixed = read_metadata(out)["int8_mixed_precision"]
    quantized = _int8_groups(out)
    assert "backbone.fpn" not in quantized and {"box_head", "rpn_head", "backbone.body.6"} <= quantized
    assert set(mixed["quantized_groups"]) == quantized and mixed["sensitivity"]["backbone.fpn"] == 0.5
    assert mixed["error"] == pytest.approx(0.07) and mixed["trials"] <= len(mixed["sensitivity"]) + 5

    with pytest.raises(ValueError, match="no layer group can be quantized"):
        quantize_int8(fp32, tmp_path / "none.onnx", calib, evaluate=lambda p: 1.0, budget=0.1)


def test_int8_disagreement_is_zero_for_the_fp32_model_and_measures_a_noise_floor(exported, tiny_data):
    from cxr.export.commands import Int8Disagreement, _studies

    ckpt, fp32, _ = exported
    evaluate = Int8Disagreement(ckpt, fp32, _studies(tiny_data, "train", 4, "nih-bbox"))
    assert sum(len(d) for d in evaluate.reference) > 0
    assert evaluate(fp32) == 0.0
    assert 0.0 <= evaluate.noise_floor <= 1.0


def test_int8_budget_outside_0_1_is_refused(exported, tiny_data):
    _, _, ckpt_path = exported
    with pytest.raises(ValueError, match="--int8-budget is a fraction"):
        run_export("onnx-int8", ckpt_path, out="x.onnx", data=tiny_data, int8_budget=5.0)


def test_mobilenet_v2_exports_checks_quantizes_and_fills_a_repository(tmp_path, tiny_data):
    """The demo's architecture through every CPU artifact: ONNX with parity, INT8, the Triton repository."""
    ckpt_path = _checkpoint(tmp_path, arch="fasterrcnn_mobilenet_v2_fpn", seed=5)
    repo = tmp_path / "repo"
    res = run_export("onnx", ckpt_path, repository=repo, data=tiny_data, check=True, check_images=3)
    assert res.parity.passed and res.path.is_file()
    res8 = run_export("onnx-int8", ckpt_path, repository=repo, data=tiny_data, calibration_images=3, int8_budget=None)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(res8.path)).graph.node)
    meta = read_repository_metadata(repo)
    assert meta["model"]["arch"] == "fasterrcnn_mobilenet_v2_fpn" and {"onnx", "onnx-int8"} <= set(meta["artifacts"])
    assert (repo / "cxr_detector" / "config.pbtxt").is_file() and (repo / "detector" / "config.pbtxt").is_file()


def test_export_checkpoint_keeps_fewer_proposals(tmp_path, capsys):
    """`cxr export checkpoint --proposals N`: same weights, N RPN proposals per image in PyTorch and in the
    exported graph, the version marked, the source untouched; bad uses are refused with a reason."""
    from cxr.cli import main

    src = _checkpoint(tmp_path)
    before = src.read_bytes()
    original = load_checkpoint(src)
    n = original.model_config.rpn_post_nms_top_n_test // 4
    out = tmp_path / "p.pt"
    assert main(["export", "checkpoint", "--checkpoint", str(src), "--proposals", str(n), "--out", str(out)]) == 0
    assert src.read_bytes() == before
    derived = load_checkpoint(out)
    assert derived.model_config.rpn_post_nms_top_n_test == n
    assert derived.model_version == "2026.01.01+tiny+p{}".format(n)
    assert derived.meta["derived"][-1]["rpn_post_nms_top_n_test"] == [original.model_config.rpn_post_nms_top_n_test, n]
    assert all(torch.equal(derived.state[k], original.state[k]) for k in original.state)
    # Derived again: one suffix, the latest.
    assert load_checkpoint(out).with_test_proposals(n + 1).model_version == "2026.01.01+tiny+p{}".format(n + 1)

    x = torch.from_numpy(_films(2))
    for ckpt, want in ((original, original.model_config.rpn_post_nms_top_n_test), (derived, n)):
        graph = ServingGraph.from_checkpoint(ckpt)
        with torch.no_grad():
            props, _ = graph.proposals(list(graph.backbone(x).values()))
        assert props.shape[1] == want
    onnx_path = export_onnx(derived, tmp_path / "p.onnx")
    o, r = OrtDetector(onnx_path, threads=1)(_films(2)), TorchDetector(derived)(_films(2))
    np.testing.assert_allclose(o[1], r[1], atol=1e-4)

    capsys.readouterr()
    assert main(["export", "checkpoint", "--checkpoint", str(src), "--out", str(tmp_path / "x.pt")]) == 2
    assert "--proposals" in capsys.readouterr().err
    assert main(["export", "checkpoint", "--checkpoint", str(src), "--proposals", "5", "--out", str(src)]) == 2
    assert "is the source checkpoint" in capsys.readouterr().err
    assert main(["export", "onnx", "--checkpoint", str(src), "--proposals", "5", "--out", str(tmp_path / "y.onnx")]) == 2
    assert "export checkpoint" in capsys.readouterr().err
    assert main(["export", "checkpoint", "--checkpoint", str(src), "--proposals", "0", "--out", str(tmp_path / "z.pt")]) == 2
    assert "whole number >= 1" in capsys.readouterr().err
    assert src.read_bytes() == before and not (tmp_path / "x.pt").exists() and not (tmp_path / "z.pt").exists()
