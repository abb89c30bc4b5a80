"""Checkpoint format: weights plus everything needed to serve them.

A checkpoint is one ``torch.save`` file holding only tensors and plain Python
containers, so it loads with ``torch.load(weights_only=True)`` (no pickled code):

``{"format": "cxr-checkpoint/1", "model": state_dict, "meta": {...}, "train_state": {...} | absent}``

``meta`` carries the task (``detect``: boxes; ``segment``: a Mask R-CNN's boxes and
instance masks), the model config (architecture, input size, anchors), the
preprocessing parameters, the class list, the model version, the training data
fingerprint, the weights that initialised it (name, file, SHA-256; ``{"name": "none"}``
from scratch), validation metrics, image-level thresholds and the loss history.
Every exported artifact copies these fields.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from cxr import __version__
from cxr.errors import InvalidFileError, InvalidOptionError, MissingFileError
from cxr.labels import CUSTOM_LABELSET, LabelSet
from cxr.postprocess import PostprocessConfig
from cxr.preprocess import PreprocessConfig
from cxr.training.model import ModelConfig, build_model

FORMAT = "cxr-checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint (``state`` is the model's state dict)."""

    state: dict
    model_config: ModelConfig
    preprocess: PreprocessConfig
    class_names: tuple[str, ...]
    labelset_name: str = CUSTOM_LABELSET
    model_version: str = "0"
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    meta: dict = field(default_factory=dict)
    train_state: dict | None = None

    @property
    def task(self) -> str:
        """``detect`` (boxes) or ``segment`` (boxes and instance masks: a Mask R-CNN), from the architecture."""
        return self.model_config.task

    @property
    def labelset(self) -> LabelSet:
        return LabelSet.from_names(self.class_names, self.labelset_name)

    def build_model(self) -> torch.nn.Module:
        model = build_model(self.model_config)
        model.load_state_dict(self.state)
        return model.eval()

    def with_test_proposals(self, n: int, source: str | Path | None = None) -> Checkpoint:
        """The same weights keeping ``n`` RPN proposals per image at test time (the model's
        ``rpn_post_nms_top_n_test``; torchvision's 1,000, Faster R-CNN's paper 300): the ROI stage
        (ROI Align, the box head) scales with it.  A deployment setting, not a retraining: the
        model version gains ``+p<n>`` and ``meta["derived"]`` records what changed."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidOptionError(f"test-time proposals must be a whole number >= 1, got {n!r}")
        old = self.model_config.rpn_post_nms_top_n_test
        meta = dict(self.meta)
        meta["derived"] = [*meta.get("derived", []), {"from": None if source is None else str(source),
                                                      "model_version": self.model_version, "rpn_post_nms_top_n_test": [old, n]}]
        base = re.sub(r"\+p\d+$", "", self.model_version)  # derived again: one +p suffix, the latest
        return replace(self, model_config=replace(self.model_config, rpn_post_nms_top_n_test=n),
                       model_version=f"{base}+p{n}", meta=meta, train_state=None)

    def metadata(self) -> dict:
        """The fields every exported artifact carries (JSON-serialisable)."""
        return {
            "format": FORMAT,
            "task": self.task,
            "model_version": self.model_version,
            "class_names": list(self.class_names),
            "labelset": self.labelset_name,
            "model": self.model_config.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "postprocess": self.postprocess.to_dict(),
            "thresholds": dict(self.meta.get("thresholds", {})),
            "data_fingerprint": self.meta.get("data_fingerprint"),
            # which weights initialised it ({"name": "none"}: from scratch; None: not recorded)
            "weights": self.meta.get("weights"),
            "cxr_version": self.meta.get("cxr_version", __version__),
        }


def data_fingerprint(studies: Iterable) -> str:
    """sha256 over image ids, splits and box annotations: same data, same fingerprint."""
    h = hashlib.sha256()
    for s in sorted(studies, key=lambda s: s.image_id):
        h.update(f"{s.image_id}|{s.split}|{','.join(s.box_labels)}|".encode())
        h.update(s.boxes.astype("<f4").tobytes())
    return h.hexdigest()


def check_input_size(source: str | Path, model: ModelConfig, preprocess: PreprocessConfig, meta: dict) -> int:
    """The one input size S of a checkpoint, or ``ValueError`` naming the sizes that disagree.

    The model's anchors and ROI scales, the preprocessing letterbox and the exported
    graph are all built for S; a checkpoint whose blocks say different things would
    export and serve a model fed images of a size it was not built for.
    """
    sizes = {"model": model.size, "preprocess": preprocess.size}
    train_size = (meta.get("train_config") or {}).get("size")
    if train_size is not None:  # absent in checkpoints not written by `cxr train`
        sizes["train_config"] = int(train_size)
    if len(set(sizes.values())) > 1:
        found = ", ".join(f"{block} size {size}" for block, size in sizes.items())
        raise InvalidFileError(
            f"{source}: the input size disagrees inside the checkpoint ({found}); one model has one size S. "
            f"Retrain with `cxr train --size S`, or correct the metadata's 'size' fields to the size the model was trained at")
    return model.size


def save_checkpoint(path: str | Path, model: torch.nn.Module, ckpt: Checkpoint) -> Path:
    """Write ``model``'s weights with ``ckpt``'s metadata atomically (tmp + rename)."""
    path = Path(path)
    check_input_size(path, ckpt.model_config, ckpt.preprocess, ckpt.meta)  # fail here, not when it is loaded
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(ckpt.meta)
    meta.update(
        task=ckpt.task,
        model=ckpt.model_config.to_dict(),
        preprocess=ckpt.preprocess.to_dict(),
        postprocess=ckpt.postprocess.to_dict(),
        class_names=list(ckpt.class_names),
        labelset=ckpt.labelset_name,
        model_version=ckpt.model_version,
        cxr_version=__version__,
    )
    json.dumps(meta, allow_nan=True)  # fail here, not at load time, on non-plain metadata
    obj = {"format": FORMAT, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta}
    if ckpt.train_state is not None:
        obj["train_state"] = ckpt.train_state
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidFileError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise InvalidFileError(f"{path} is not a cxr checkpoint (format {got!r}, expected {FORMAT!r})")
    meta = obj["meta"]
    model_config, preprocess = ModelConfig.from_dict(meta["model"]), PreprocessConfig.from_dict(meta["preprocess"])
    check_input_size(path, model_config, preprocess, meta)
    if meta.get("task", model_config.task) != model_config.task:  # absent: written before masks, a detector
        raise InvalidFileError(f"{path}: its metadata says task {meta['task']!r} but its architecture {model_config.arch} "
                               f"does {model_config.task!r}; the file was edited or damaged")
    return Checkpoint(
        state=obj["model"],
        model_config=model_config,
        preprocess=preprocess,
        class_names=tuple(meta["class_names"]),
        labelset_name=meta.get("labelset", CUSTOM_LABELSET),
        model_version=str(meta.get("model_version", "0")),
        postprocess=PostprocessConfig(**meta.get("postprocess", {})),
        meta=meta,
        train_state=obj.get("train_state"),
    )
