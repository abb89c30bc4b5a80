"""Model specs of `cxr bench --arch`, untrained checkpoints, the GEMM peaks' structure and the CPU R50-FPN
training configuration.  Cheap: no server, tiny sizes, no timing assertions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxr.benchmarks.cli import config_from_args
from cxr.benchmarks.models import parse_spec, untrained_checkpoint
from cxr.cli import build_parser
from cxr.errors import InvalidOptionError, UsageError
from cxr.training.config import PRESETS

DEMO_ARCH = PRESETS["cpu-demo"]["arch"]  # `--arch cpu-demo` is whatever the preset trains


def parse(*argv: str):
    return config_from_args(build_parser().parse_args(["bench", *argv]))


def test_arch_specs_take_presets_sizes_and_the_full_run_adds_800():
    assert parse_spec("cpu-demo", ()) == [(DEMO_ARCH, 256)]
    assert parse_spec("fasterrcnn_resnet50_fpn@512", (640,)) == [("fasterrcnn_resnet50_fpn", 512)]
    assert parse_spec("r50-fpn", (512, 800)) == [("fasterrcnn_resnet50_fpn", 512), ("fasterrcnn_resnet50_fpn", 800)]
    with pytest.raises(InvalidOptionError, match="unknown architecture or preset; choose one of: cpu-demo, r50-fpn"):
        parse_spec("resnet9000", ())
    with pytest.raises(InvalidOptionError, match="the size after @ must be an integer"):
        parse_spec("r50-fpn@big", ())
    quick = parse("--quick", "--arch", "cpu-demo,fasterrcnn_resnet50_fpn", "--out", "o")
    assert quick.checkpoint is None
    assert quick.untrained_specs() == [(DEMO_ARCH, 256), ("fasterrcnn_resnet50_fpn", 512)]
    full = parse("--arch", "fasterrcnn_resnet50_fpn", "--out", "o")
    assert full.untrained_specs() == [("fasterrcnn_resnet50_fpn", 512), ("fasterrcnn_resnet50_fpn", 800)]  # 800: full only
    assert parse("--arch", "r50-fpn", "--size", "512", "--out", "o").untrained_specs() == [("fasterrcnn_resnet50_fpn", 512)]
    with pytest.raises(UsageError, match="needs --checkpoint CKPT .* or --arch ARCH"):
        parse("--out", "o")
    with pytest.raises(InvalidOptionError, match="--url serves the --checkpoint model"):
        parse("--arch", "cpu-demo", "--url", "127.0.0.1:8001", "--out", "o")
    with pytest.raises(InvalidOptionError, match="unknown backend"):
        parse("--arch", "cpu-demo", "--backends", "onnx,tflite", "--out", "o")
    assert parse("--arch", "cpu-demo", "--backends", "openvino-int8,pytorch-bf16", "--out", "o").backends == (
        "openvino-int8", "pytorch-bf16")


def test_untrained_weights_are_deterministic_and_carry_the_preset_fields():
    a, _ = untrained_checkpoint(DEMO_ARCH, 64)
    b, _ = untrained_checkpoint(DEMO_ARCH, 64)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert a.meta["untrained"] is True and a.preprocess.size == a.model_config.size == 64
    assert a.model_config.representation_size == 256 and a.model_config.rpn_post_nms_top_n_test == 150  # cpu-demo's
    assert a.model_config.fpn_channels == PRESETS["cpu-demo"]["fpn_channels"]
    assert a.model_version == f"untrained-{DEMO_ARCH}-64-seed0"


def test_gemm_peaks_name_each_precision_and_what_was_timed():
    from cxr.benchmarks.env import environment, gemm_peaks
    from cxr.machine import isa_line

    peaks = gemm_peaks(64, repeats=1)
    for key in ("fp32", "bf16", "int8"):
        assert peaks[key]["gflops"] is None or peaks[key]["gflops"] > 0, key
        assert peaks[key]["how"]
    assert peaks["fp32"]["gflops"] > 0 and isinstance(peaks["int8"]["native"], bool)
    assert {"torch_int_mm", "ort_matmul_integer"} & set(peaks["int8"])  # at least one INT8 path measured
    env = environment()
    assert env["isa"] == isa_line(env["cpu"]) and "VNNI" in env["isa"] and "AMX" in env["isa"]
    assert isa_line({"simd": ["avx2"], "avx512": False, "vnni": False, "amx": False}) == \
        "AVX2 yes, AVX-512 no, VNNI no, BF16 no, AMX no"


def test_isa_line_says_when_onednn_is_capped():
    """A figure taken under ONEDNN_MAX_CPU_ISA ran other kernels than this CPU's best: its ISA line must say so
    (and so differs from an uncapped run's, which makes `cxr serve` re-time a paths record taken under a cap)."""
    from cxr.machine import isa_cap, isa_line

    amx = {"simd": ["avx2", "avx512_bf16", "amx_tile"], "avx512": True, "vnni": True, "amx": True}
    plain = "AVX2 yes, AVX-512 yes, VNNI yes, BF16 yes, AMX yes"
    assert isa_line(amx, environ={}) == plain and isa_cap({"ONEDNN_MAX_CPU_ISA": "ALL"}) is None
    assert isa_line(amx, environ={"ONEDNN_MAX_CPU_ISA": "avx512_core_vnni"}) == \
        plain + "; oneDNN capped at AVX512_CORE_VNNI (ONEDNN_MAX_CPU_ISA)"
    assert isa_cap({"DNNL_MAX_CPU_ISA": "AVX2"}) == "AVX2"  # oneDNN's older spelling


def test_isa_cap_makes_bf16_paths_unavailable(tmp_path):
    """Under ONEDNN_MAX_CPU_ISA below BF16 no BF16 kernel is dispatched (OpenVINO then runs BF16 ~35x slower,
    measured): cxr export paths / cxr serve do not offer the BF16 paths; the others stay."""
    from cxr.serving.paths import BY_NAME

    line = "AVX2 yes, AVX-512 yes, VNNI yes, BF16 yes, AMX yes; oneDNN capped at {} (ONEDNN_MAX_CPU_ISA)"
    for name in ("openvino-bf16", "openvino-fp32"):
        (tmp_path / BY_NAME[name].file).write_bytes(b"onnx")
    bf16 = BY_NAME["openvino-bf16"]
    assert "capped at AVX512_CORE_VNNI" in bf16.available(tmp_path, line.format("AVX512_CORE_VNNI"))
    assert bf16.available(tmp_path, line.format("AVX512_CORE_AMX")) is None
    assert BY_NAME["openvino-fp32"].available(tmp_path, line.format("AVX512_CORE_VNNI")) is None


def test_merged_peaks_keep_the_better_measurement_per_precision():
    from cxr.benchmarks.env import merge_peaks

    loaded = {"n": 8, "fp32": {"gflops": 60.0}, "int8": {"gflops": 300.0, "native": True}}
    quiet = {"n": 8, "fp32": {"gflops": 180.0}, "int8": {"gflops": 250.0, "native": True}}
    merged = merge_peaks(loaded, quiet)
    assert merged["fp32"]["gflops"] == 180.0 and merged["int8"]["gflops"] == 300.0 and len(merged["runs"]) == 2
    assert merge_peaks({}, quiet) == quiet


def test_train_r50_is_the_r50_preset_with_cpu_overrides(capsys):
    from cxr.benchmarks.cli import main
    from cxr.benchmarks.train_r50 import CPU_OVERRIDES, train_config
    from cxr.training.config import make_config

    cfg = train_config(Path("d"), Path("o"), minutes=90)
    gpu = make_config("r50-fpn")
    assert (cfg.arch, cfg.size, cfg.max_minutes, cfg.device, cfg.amp) == ("fasterrcnn_resnet50_fpn", 512, 90.0, "cpu", False)
    # The served graph is the product's: only training-time fields differ.
    for same in ("anchor_sizes", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test", "representation_size", "labelset"):
        assert getattr(cfg, same) == getattr(gpu, same), same
    assert {k for k in CPU_OVERRIDES if getattr(cfg, k) != getattr(gpu, k)} == set(CPU_OVERRIDES)
    with pytest.raises(InvalidOptionError, match="--minutes must be positive"):
        train_config(Path("d"), Path("o"), minutes=0)
    assert main(["train-r50", "--data", "d", "--out", "o", "--minutes", "5", "--dry-run"]) == 0
    assert '"max_minutes": 5.0' in capsys.readouterr().out
