"""Preprocessing to the model's fixed ``[C, S, S]`` input.

This is torchvision's ``GeneralizedRCNNTransform`` lifted out of the model: resize
(keeping the aspect ratio, longer side = S), centre-pad to ``S x S`` (a letterbox,
because Triton's dynamic batcher only batches equal shapes) and normalise.  Training,
evaluation, the in-process baselines and the Triton preprocess model all call
:func:`preprocess`; the :class:`~cxr.boxes.LetterboxRecord` it returns maps boxes
back to the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from cxr.boxes import LetterboxRecord
from cxr.errors import InvalidOptionError
from cxr.decode.types import DecodedImage

# ImageNet statistics: backbones pretrained on ImageNet (the usual transfer-learning
# start) expect them; the grayscale film is replicated into the three channels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of :func:`preprocess`; stored in checkpoints and model configs."""

    size: int = 512  # S: 512 keeps nodules (~60 px in NIH's 1024 grid) at >= 30 px
    channels: int = 3  # ResNet backbones take RGB; the film is replicated
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    pad_value: float = 0.0  # black, like the collimated border of a film

    def __post_init__(self) -> None:
        if self.size < 32:
            raise InvalidOptionError(f"input size must be >= 32, got {self.size}")
        if self.channels not in (1, 3):
            raise InvalidOptionError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise InvalidOptionError(
                f"mean and std need {self.channels} values each, got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise InvalidOptionError(f"std values must be positive, got {self.std}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        known = {k: d[k] for k in ("size", "channels", "mean", "std", "pad_value") if k in d}
        for k in ("mean", "std"):
            if k in known:
                known[k] = tuple(float(v) for v in known[k])
        return cls(**known)


def letterbox(pixels: np.ndarray, size: int, *, pad_value: float = 0.0, spacing_mm=None) -> tuple[np.ndarray, LetterboxRecord]:
    """Resize float ``[H, W]`` pixels into a ``[size, size]`` canvas, aspect ratio kept.

    Returns the canvas (float32) and the record that maps ORIGINAL-pixel boxes to the
    canvas frame and back.  Downscaling uses PIL's antialiased bilinear filter so
    thin structures (pleural lines, nodules) are averaged, not aliased.
    """
    from PIL import Image

    h, w = pixels.shape
    record = LetterboxRecord.fit(h, w, size, spacing_mm)
    new_h, new_w = record.resized_shape
    if (new_h, new_w) == (h, w):
        resized = pixels.astype(np.float32, copy=False)
    else:
        img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
        resized = np.asarray(img.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float32)
    canvas = np.full((size, size), pad_value, dtype=np.float32)
    y0, x0 = int(record.pad_y), int(record.pad_x)
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return canvas, record


def normalize(canvas: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """``[S, S]`` in [0, 1] -> ``[C, S, S]`` float32 normalised per channel."""
    mean = np.asarray(config.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(config.std, dtype=np.float32)[:, None, None]
    return ((canvas[None, :, :] - mean) / std).astype(np.float32)


def preprocess(image: DecodedImage | np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, LetterboxRecord]:
    """A decoded radiograph -> model input ``[C, S, S]`` float32 and its letterbox record.

    ``image`` is a :class:`DecodedImage` or float pixels ``[H, W]`` in [0, 1].
    """
    if isinstance(image, DecodedImage):
        pixels, spacing = image.pixels, image.spacing_mm
    else:
        pixels, spacing = np.asarray(image, dtype=np.float32), None
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be [H, W], got shape {pixels.shape}")
    canvas, record = letterbox(pixels, config.size, pad_value=config.pad_value, spacing_mm=spacing)
    return normalize(canvas, config), record


def preprocess_batch(
    images: Sequence[DecodedImage | np.ndarray], config: PreprocessConfig
) -> tuple[np.ndarray, list[LetterboxRecord]]:
    """Several images -> ``[B, C, S, S]`` and their records."""
    tensors, records = zip(*(preprocess(im, config) for im in images)) if images else ((), ())
    batch = np.stack(tensors) if tensors else np.zeros((0, config.channels, config.size, config.size), np.float32)
    return batch, list(records)

