"""ONNX FP32 -> ONNX INT8 (static, QDQ) for CPU inference with ONNX Runtime.

Only the network is quantized: the nodes of the backbone, FPN, RPN head, box head and (a Mask
R-CNN) mask head (:data:`NETWORK_SCOPE`).  The arithmetic around them -- anchor decoding, NMS, ROI
Align, softmax, top-k -- stays FP32, and so do the two final layers of the box
predictor (class scores and box regression), where 8-bit steps would move scores and
box edges visibly, and the mask predictor's two (up-convolution, per-class logits).  Weights are per-channel int8; activations uint8 (the U8S8 kernels
that x86 CPUs run fastest), calibrated with MinMax on preprocessed training images.

Which ops (:class:`Int8Options`).  Quantizing only Conv/MatMul/Gemm leaves every residual
Add, ReLU, max-pool and FPN upsample in FP32 between a DequantizeLinear and a
QuantizeLinear; ONNX Runtime then cannot keep the tensors in uint8 from one conv to the
next and the gain is small (R50-FPN @512 on an AVX-512 VNNI CPU: 1.08x over FP32).
Quantizing every op type inside the network lets it fuse QLinearConv -> QLinearAdd ->
QLinearConv chains and QGemm for the box head (1.6x with the box head left FP32, 2.3-2.5x
with it; benchmarks/README.md, "INT8").  ``reduce_range`` (7-bit weights) is needed only
without VNNI, where the int8 dot product accumulates pairs in int16 and can saturate;
with VNNI or AMX full 8-bit weights are both exact and as fast.

Mixed precision.  Per-tensor 8-bit activations do not suit every trained network:
a small detector trained from scratch (the cpu-demo MobileNetV3) has layers whose
channels differ in range by orders of magnitude, and quantizing all of them moves
scores by up to 0.5.  With ``evaluate`` given, :func:`quantize_int8` measures each
layer group's damage on its own (quantize only that group, compare detections with
FP32 on validation images), then quantizes the longest run of least-sensitive
groups that keeps the whole model within ``budget`` (bisection); the rest stay FP32.  Calibration runs
once (ORT's calibration cache), so each trial costs a few seconds.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr.errors import InvalidOptionError

log = logging.getLogger(__name__)

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")  # the compute-heavy ops; mixed precision groups are made of these
# Node-name prefixes of the network (torch.onnx names nodes after module paths; the
# ServingGraph's own arithmetic -- anchor decoding, NMS, ROI Align, top-k -- is unprefixed).
NETWORK_SCOPE = ("/backbone/", "/rpn_head/", "/box_head/", "/mask_head/")  # mask_head: a Mask R-CNN's 3x3 convs
# Node-name fragments kept in FP32: the box predictor's two layers and the mask predictor's
# (its 2x up-convolution and the per-class 1x1 logits: 8-bit steps there move mask edges).
SENSITIVE_NODES = ("box_predictor", "mask_predictor")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Options:
    """How a model is quantized (the defaults are what measured fastest at parity; module docstring).

    op_types: the op types that get Q/DQ inside :data:`NETWORK_SCOPE`; None = every op
    type ONNX Runtime can quantize (Conv, Gemm, Add, ReLU, MaxPool, Resize, Concat ...).
    reduce_range: 7-bit weights; None = only when the CPU has no VNNI/AMX (:func:`cpu_has_vnni`).
    calibration: minmax | entropy | percentile (ONNX Runtime's calibrators).
    """

    op_types: tuple[str, ...] | None = None
    scope: tuple[str, ...] = NETWORK_SCOPE
    exclude: tuple[str, ...] = SENSITIVE_NODES
    per_channel: bool = True
    reduce_range: bool | None = None
    calibration: str = "minmax"
    activation_symmetric: bool = False

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATION_METHODS:
            raise InvalidOptionError(f"unknown INT8 calibration {self.calibration!r}; choose one of: {', '.join(CALIBRATION_METHODS)}")
        if self.op_types is not None:
            object.__setattr__(self, "op_types", tuple(self.op_types))

    @classmethod
    def full(cls, **overrides) -> Int8Options:
        """Everything in the network in INT8 (``cxr export onnx-int8 --int8-all``, the bench's untrained rows)."""
        return cls(**overrides)

    @classmethod
    def compute_only(cls, **overrides) -> Int8Options:
        """Only Conv/MatMul/Gemm (this module's behaviour before the full op set; kept for comparison)."""
        return cls(op_types=QUANTIZED_OPS, **overrides)

    def resolved_reduce_range(self) -> bool:
        return (not cpu_has_vnni()) if self.reduce_range is None else bool(self.reduce_range)

    def to_dict(self) -> dict:
        return {"op_types": "all" if self.op_types is None else list(self.op_types), "scope": list(self.scope),
                "exclude": list(self.exclude), "per_channel": self.per_channel, "reduce_range": self.resolved_reduce_range(),
                "calibration": self.calibration, "activation_symmetric": self.activation_symmetric}


def cpu_has_vnni() -> bool:
    """Whether this CPU has an int8 dot-product instruction (AVX-512 VNNI, AVX-VNNI or AMX-INT8)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags))
DEFAULT_BUDGET = 0.05  # at most 5 % of the FP32 model's detections may change (gone, moved, or re-scored)


class _Calibration:
    """onnxruntime CalibrationDataReader over preprocessed batches of one image."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self.input_name = input_name
        self._it: Iterator[np.ndarray] = iter(batches)

    def get_next(self):
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:  # some onnxruntime versions call it
        pass


def node_group(name: str) -> str:
    """The module a node belongs to, at the granularity mixed precision works at.

    ``/backbone/body/body.6/block/...`` -> ``backbone.body.6`` (one inverted-residual
    block), ``/backbone/body/layer2/layer2.0/conv1/Conv`` -> ``backbone.layer2``,
    ``/backbone/fpn/...`` -> ``backbone.fpn``, ``/rpn_head/...`` -> ``rpn_head``.
    """
    parts = [p for p in name.split("/") if p]
    if len(parts) >= 3 and parts[0] == "backbone" and parts[1] == "body":
        return f"backbone.{parts[2]}"
    if len(parts) >= 2 and parts[0] == "backbone":
        return f"backbone.{parts[1]}"
    return parts[0] if parts else name


@dataclass
class MixedPrecision:
    """What the search measured and chose (stamped into the model's metadata)."""

    budget: float
    sensitivity: dict[str, float] = field(default_factory=dict)  # group -> error with only that group in INT8
    quantized: list[str] = field(default_factory=list)
    error: float = 0.0  # of the chosen combination
    trials: int = 0
    noise_floor: float | None = None  # the FP32 model's own error under input noise, when the evaluator measures it

    def to_dict(self) -> dict:
        return {"budget": self.budget, "error": round(self.error, 4), "trials": self.trials, "quantized_groups": self.quantized,
                "noise_floor": None if self.noise_floor is None else round(self.noise_floor, 4),
                "sensitivity": {k: round(v, 4) for k, v in self.sensitivity.items()}}


class _Builder:
    """Pre-processes and calibrates once; builds QDQ models for any set of FP32 nodes."""

    def __init__(self, fp32_path: Path, calibration: Sequence[np.ndarray], tmp: Path, options: Int8Options) -> None:
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.tmp, self.options = tmp, options
        self.calibration = list(calibration)
        self.prepped = tmp / "prepped.onnx"
        fp32_path = Path(fp32_path).resolve()
        try:
            # In tmp: where symbolic shape inference fails, ONNX Runtime dumps its partial model
            # (sym_shape_infer_temp.onnx and a <uuid>.data of all weights) into the working directory.
            with contextlib.chdir(tmp):
                quant_pre_process(str(fp32_path), str(self.prepped), skip_symbolic_shape=False)
        except Exception as exc:  # symbolic shape inference cannot follow NMS/top-k everywhere
            log.info("symbolic shape inference failed (%s); quantizing without it", exc)
            quant_pre_process(str(fp32_path), str(self.prepped), skip_symbolic_shape=True)
        model = self.model = onnx.load(str(self.prepped))
        self.input_name = model.graph.input[0].name
        ops = options.op_types
        # Every node of the network that may get Q/DQ; the compute ones are what mixed precision groups by.
        self.nodes = [n.name for n in model.graph.node if n.name.startswith(options.scope) and (ops is None or n.op_type in ops)]
        self.compute = [n.name for n in model.graph.node if n.name in set(self.nodes) and n.op_type in QUANTIZED_OPS]
        self.cache = tmp / "calibration.json"  # ORT's calibration cache: ranges computed on the first build only

    def build(self, out: Path, excluded: Sequence[str]) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        o, skip = self.options, set(excluded)
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[o.calibration]
        quantize_static(
            str(self.prepped), str(out), _Calibration(self.input_name, self.calibration),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=None if o.op_types is None else list(o.op_types),
            nodes_to_quantize=[n for n in self.nodes if n not in skip], per_channel=o.per_channel,
            reduce_range=o.resolved_reduce_range(), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=method, calibration_cache_path=str(self.cache),
            extra_options={"ActivationSymmetric": o.activation_symmetric},
        )
        return out


def _search(builder: _Builder, always_fp32: Sequence[str], evaluate: Callable[[Path], float], budget: float,
            progress: bool) -> MixedPrecision:
    from tqdm.auto import tqdm

    groups: dict[str, list[str]] = {}
    compute = set(builder.compute)
    for name in builder.nodes:
        if name not in always_fp32:
            groups.setdefault(node_group(name), []).append(name)
    groups = {g: names for g, names in groups.items() if compute & set(names)}  # a group without a conv/GEMM gains nothing
    result = MixedPrecision(budget=budget, noise_floor=getattr(evaluate, "noise_floor", None))
    if result.noise_floor is not None:
        log.info("FP32 model under input noise of half a grey level: %.1f %% of detections change", 100 * result.noise_floor)
    trial = builder.tmp / "trial.onnx"

    def error_with(chosen: Sequence[str]) -> float:
        keep = {n for g in chosen for n in groups[g]}
        result.trials += 1
        return float(evaluate(builder.build(trial, [n for n in builder.nodes if n not in keep])))

    bar = tqdm(total=len(groups) + max(1, len(groups).bit_length()), desc="INT8 layer sensitivity", unit="trial",
               disable=not progress, leave=False)
    for g in groups:
        result.sensitivity[g] = error_with([g])
        bar.update()
    # The longest run of least-sensitive groups that stays within budget, by bisection
    # (the error mostly grows with each group added; the first group alone is known to fit).
    order = [g for g in sorted(groups, key=result.sensitivity.__getitem__) if result.sensitivity[g] <= budget]
    lo, hi = min(1, len(order)), len(order)
    result.error = result.sensitivity[order[0]] if order else 0.0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        err = error_with(order[:mid])
        bar.update()
        if err <= budget:
            lo, result.error = mid, err
        else:
            hi = mid - 1
    result.quantized = order[:lo]
    bar.close()
    log.info("INT8 mixed precision: %d of %d layer groups quantized (error %.3f, budget %.3f, %d trials)",
             len(result.quantized), len(groups), result.error, budget, result.trials)
    return result


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Sequence[np.ndarray],
    *,
    options: Int8Options | None = None,
    evaluate: Callable[[Path], float] | None = None,
    budget: float = DEFAULT_BUDGET,
    progress: bool = False,
) -> Path:
    """Quantize ``fp32_path`` into ``out_path`` using ``calibration`` inputs ``[1, C, S, S]``.

    options: which ops, weights and calibration (:class:`Int8Options`; default: the full network).
    evaluate: ``f(int8_model_path) -> error`` (e.g. the fraction of FP32 detections
    that change on validation images); given, only the layer groups that keep the
    error within ``budget`` are quantized (see the module docstring).
    """
    import onnx

    from cxr.export.onnx_export import read_metadata, stamp_metadata

    if not calibration:
        raise ValueError("INT8 calibration needs at least one image")
    options = options or Int8Options()
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    mixed = None
    with tempfile.TemporaryDirectory() as tmp:
        builder = _Builder(fp32_path, calibration, Path(tmp), options)
        excluded = [n for n in builder.nodes if any(f in n for f in options.exclude)]
        if evaluate is not None:
            mixed = _search(builder, excluded, evaluate, budget, progress)
            if not mixed.quantized:
                least = f"{min(mixed.sensitivity.values()):.0%}" if mixed.sensitivity else "n/a (nothing to quantize)"
                floor = "" if mixed.noise_floor is None else (
                    f"; the FP32 model itself changes {mixed.noise_floor:.0%} of its detections under input noise of half "
                    "a grey level, so INT8 cannot do much better: serve FP32, or train longer / from pretrained weights")
                raise InvalidOptionError(f"no layer group can be quantized to INT8 within the budget ({budget:.2f}); "
                                 f"least sensitive group changes {least} of detections{floor}")
            chosen = set(mixed.quantized)
            excluded = [n for n in builder.nodes if n in excluded or node_group(n) not in chosen]
        builder.build(out_path, excluded)
        quantized_nodes = set(builder.nodes) - set(excluded)
        # What stays FP32 among the compute ops (box predictor, groups the search left out).
        fp32_compute = [n.name for n in builder.model.graph.node if n.op_type in QUANTIZED_OPS and n.name not in quantized_nodes]
    meta = read_metadata(fp32_path)
    meta.update(precision="int8", calibration_images=len(calibration), int8_excluded_nodes=fp32_compute,
                reduce_range=options.resolved_reduce_range(), int8_options=options.to_dict())
    if mixed is not None:
        meta["int8_mixed_precision"] = mixed.to_dict()
    quantized = onnx.load(str(out_path))
    stamp_metadata(quantized, meta)
    onnx.save(quantized, str(out_path))
    log.info("wrote %s (%.1f MB), %d conv/GEMM nodes kept FP32", out_path, out_path.stat().st_size / 1e6, len(fp32_compute))
    return out_path
