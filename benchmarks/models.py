"""The models one ``cxr bench`` run covers: a trained checkpoint, and untrained architectures for speed.

Speed does not depend on what the weights learned, so the product's real model (the
seed's ResNet-50 FPN at 512 or 800 px, 109-268 GFLOP per image) is benchmarked
without a trained checkpoint: :func:`untrained_checkpoint` builds it with
deterministic weights (``torch.manual_seed`` before :func:`cxr.training.model.build_model`),
writes a normal checkpoint file and :func:`prepare_untrained` exports its ONNX FP32
and full-INT8 artifacts into a model repository of the bench's own.  Their accuracy and
parity columns say "untrained" instead of a number: an untrained detector's mAP means
nothing, and INT8 parity is judged on a trained model only (``cxr bench train-r50``).

Model specs on the command line (``--arch``): an architecture of
:data:`cxr.training.model.ARCHITECTURES` or a training preset name (``cpu-demo``,
``r50-fpn``), optionally ``@SIZE``.  The model's other fields (anchors, RPN top-n,
box-head width) are the preset's, so ``cpu-demo`` is timed as it is trained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from cxr.errors import InvalidOptionError

log = logging.getLogger(__name__)

UNTRAINED_SEED = 0


@dataclass
class BenchModel:
    """One model of a run: its checkpoint (loaded), the repository its artifacts are in, and where it came from."""

    name: str  # "cpu-demo@256", "fasterrcnn_resnet50_fpn@512"
    ckpt: object  # cxr.training.checkpoint.Checkpoint
    checkpoint: Path
    repository: Path
    trained: bool
    source: str  # one line for the report
    training: dict | None = None  # what the checkpoint says about its training run (time budget, epochs, val mAP)
    artifacts: dict = field(default_factory=dict)  # what the bench exported itself (untrained models)

    @property
    def size(self) -> int:
        return int(self.ckpt.preprocess.size)

    @property
    def arch(self) -> str:
        return self.ckpt.model_config.arch


def preset_for(arch: str) -> str:
    """The training preset whose model fields an architecture is benchmarked with."""
    from cxr.training.config import PRESETS

    return next((name for name, values in PRESETS.items() if values.get("arch") == arch), "r50-fpn")


def parse_spec(spec: str, sizes: tuple[int, ...]) -> list[tuple[str, int]]:
    """``ARCH[@SIZE]`` or ``PRESET[@SIZE]`` -> [(arch, size), ...]; without @SIZE every size of ``sizes``
    (empty: the preset's own size, e.g. 256 for cpu-demo and 800 -- the GPU size -- for r50-fpn)."""
    from cxr.training.model import ARCHITECTURES
    from cxr.training.config import PRESETS, make_config

    name, _, size_text = spec.partition("@")
    if name in PRESETS:
        arch = make_config(name).arch
        default = (make_config(name).size,)
    elif name in ARCHITECTURES:
        arch = name
        default = (make_config(preset_for(name)).size,)
    else:
        raise InvalidOptionError(f"--arch {spec!r}: unknown architecture or preset; choose one of: "
                                 f"{', '.join((*PRESETS, *ARCHITECTURES))} (optionally @SIZE, e.g. fasterrcnn_resnet50_fpn@512)")
    if size_text:
        try:
            return [(arch, int(size_text))]
        except ValueError as exc:
            raise InvalidOptionError(f"--arch {spec!r}: the size after @ must be an integer, e.g. {name}@512") from exc
    return [(arch, s) for s in (sizes or default)]


def untrained_checkpoint(arch: str, size: int, *, seed: int = UNTRAINED_SEED):
    """(Checkpoint, model) of ``arch`` at ``size`` with deterministic random weights.

    The model fields come from the architecture's training preset with the size
    overridden, exactly what ``cxr train --preset P --size S`` would build.
    """
    import torch

    from cxr.labels import LabelSetName, get_labelset
    from cxr.preprocess import PreprocessConfig
    from cxr.training.checkpoint import Checkpoint
    from cxr.training.model import build_model
    from cxr.training.config import make_config, model_config

    cfg = make_config(preset_for(arch), arch=arch, size=size)
    labels = get_labelset(LabelSetName.NIH_BBOX)
    mcfg = model_config(cfg, labels.num_classes)  # exactly what `cxr train --preset P --size S` builds
    torch.manual_seed(seed)  # same weights every run, so runs on different machines time the same model
    model = build_model(mcfg).eval()
    ckpt = Checkpoint(state=model.state_dict(), model_config=mcfg, preprocess=PreprocessConfig(size=size),
                      class_names=labels.names, labelset_name=labels.name,
                      model_version=f"untrained-{arch}-{size}-seed{seed}",
                      meta={"untrained": True, "seed": seed, "preset": preset_for(arch)})
    return ckpt, model


def training_summary(ckpt) -> dict | None:
    """What a trained checkpoint records about its run (None for one without training metadata)."""
    meta = ckpt.meta
    if meta.get("untrained"):
        return None
    train = meta.get("train_config") or {}
    history = meta.get("history") or []
    if not train and not history:
        return None
    return {
        "arch": train.get("arch"), "size": train.get("size"), "max_minutes": train.get("max_minutes"),
        "epochs_planned": train.get("epochs"), "epochs_run": len(history),
        "iterations": sum(int(r.get("iterations", 0)) for r in history), "batch_size": train.get("batch_size"),
        "optimizer": train.get("optimizer"), "lr": train.get("lr"), "weights": train.get("weights"),
        "n_train": meta.get("n_train"), "val_map50": (meta.get("val_metrics") or {}).get("map50"),
        "data_fingerprint": (meta.get("data_fingerprint") or "")[:12] or None,
    }


def trained_model(checkpoint: Path, repository: Path) -> BenchModel:
    from cxr.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    untrained = bool(ckpt.meta.get("untrained"))
    name = f"{ckpt.meta.get('preset') or _short_arch(ckpt.model_config.arch)}@{ckpt.preprocess.size}"
    training = training_summary(ckpt)
    source = f"checkpoint {checkpoint}"
    if training and training.get("max_minutes"):
        source += f" (trained {training['epochs_run']} epochs / {training['iterations']} iterations within a " \
                  f"{training['max_minutes']:g}-minute budget)"
    return BenchModel(name, ckpt, Path(checkpoint), Path(repository), not untrained, source, training)


def _short_arch(arch: str) -> str:
    return preset_for(arch) if preset_for(arch) == "cpu-demo" else arch


def calibration_arrays(ckpt, studies) -> list:
    """One ``[1, C, S, S]`` model input per encoded study, through the serving preprocessing."""
    from cxr.decode.image import decode_image
    from cxr.preprocess import preprocess

    return [preprocess(decode_image(data), ckpt.preprocess)[0][None] for data in studies]


def prepare_untrained(arch: str, size: int, folder: Path, calibration, *, int8: bool = True,
                      progress: bool = False) -> BenchModel:
    """Untrained ``arch@size`` with its own repository under ``folder``: ONNX FP32 and (``int8``) full INT8.

    calibration: preprocessed ``[1, C, S, S]`` inputs for INT8 (the bench's own images:
    enough for speed rows; an untrained model has no parity to protect).  Artifacts
    already in ``folder`` for the same weights are reused (export takes minutes at 800 px).
    """
    from cxr.contract import Artifact
    from cxr.export.commands import run_export
    from cxr.export.quantize import Int8Options, quantize_int8
    from cxr.export.repository import artifact_path, place_artifact, read_repository_metadata
    from cxr.training.checkpoint import load_checkpoint, save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    path, repo = folder / "untrained.pt", folder / "model_repository"
    ckpt, model = untrained_checkpoint(arch, size)
    if not path.is_file() or load_checkpoint(path).model_version != ckpt.model_version:
        save_checkpoint(path, model, ckpt)
    ckpt = load_checkpoint(path)
    fresh = read_repository_metadata(repo).get("model_version") == ckpt.model_version
    artifacts = {}
    if fresh and artifact_path(repo, Artifact.ONNX).is_file():
        artifacts["onnx"] = "reused"
    else:
        log.info("%s@%d: exporting ONNX FP32", arch, size)
        run_export(Artifact.ONNX, path, repository=repo, force=True)
        artifacts["onnx"], fresh = "exported", False
    int8_path = artifact_path(repo, Artifact.ONNX_INT8)
    if int8 and fresh and int8_path.is_file():
        artifacts["onnx-int8"] = "reused"
    elif int8:
        import tempfile

        options = Int8Options.full()
        log.info("%s@%d: quantizing to full INT8 on %d bench images", arch, size, len(calibration))
        with tempfile.TemporaryDirectory() as tmp:
            built = quantize_int8(artifact_path(repo, Artifact.ONNX), Path(tmp) / Artifact.ONNX_INT8.file, calibration,
                                  options=options, progress=progress)
            place_artifact(repo, Artifact.ONNX_INT8, built, ckpt.metadata(), extra={"precision": "int8", "untrained": True})
        artifacts["onnx-int8"] = {"exported": True, **options.to_dict()}
    name = f"{_short_arch(arch)}@{size}"
    return BenchModel(name, ckpt, path, repo, False,
                      f"untrained: deterministic weights (torch seed {UNTRAINED_SEED}), {preset_for(arch)} preset's model "
                      f"fields at {size} px", None, artifacts)
