"""PyTorch datasets over :class:`~cxr.training.studies.Study` lists, with box-safe augmentation.

Every image goes through the same core functions that serving uses:
``cxr.decode.image.decode_image`` -> ``cxr.preprocess.letterbox`` -> (augmentation, in
training only) -> ``cxr.preprocess.normalize``.  Targets are xyxy boxes in the
letterbox frame, which is the frame the model predicts in; for a Mask R-CNN
(``masks=True``) each box also has its instance mask there, letterboxed by the same
``letterbox`` as the film and moved by the same affine as its pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from cxr.boxes import LetterboxRecord, valid_boxes
from cxr.errors import MissingFileError
from cxr.decode.image import decode_image
from cxr.labels import LabelSet
from cxr.preprocess import PreprocessConfig, letterbox, normalize


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentations that keep boxes correct.

    No horizontal flip: a chest film is not left-right symmetric (heart, aortic knob,
    gastric bubble on the patient's left), so a flipped film shows dextrocardia and
    would teach the model anatomy that does not exist; cardiomegaly boxes would move
    to the wrong side.
    """

    degrees: float = 5.0  # patient rotation on the detector is a few degrees
    translate: float = 0.05  # positioning varies by a few % of the field
    scale: tuple[float, float] = (0.9, 1.1)  # source-to-image distance and body habitus
    brightness: float = 0.08  # exposure differences between machines
    contrast: float = 0.15
    gamma: tuple[float, float] = (0.8, 1.25)  # detector response curves differ
    noise_std: float = 0.01  # quantum noise


class Augmenter:
    """Random geometric + photometric augmentation of a letterboxed ``[S, S]`` film."""

    def __init__(self, config: AugmentConfig = AugmentConfig()) -> None:
        from torchvision.transforms import v2

        self.config = config
        self.affine = v2.RandomAffine(degrees=config.degrees, translate=(config.translate,) * 2, scale=config.scale)

    def __call__(self, canvas: np.ndarray, boxes: np.ndarray, labels: np.ndarray, generator: torch.Generator):
        """canvas float ``[S, S]`` in [0, 1]; boxes xyxy letterbox frame -> augmented copies."""
        return self.with_masks(canvas, boxes, labels, None, generator)[:3]

    def with_masks(self, canvas: np.ndarray, boxes: np.ndarray, labels: np.ndarray, masks: np.ndarray | None,
                   generator: torch.Generator):
        """As :meth:`__call__`, and the boxes' masks (uint8 ``[N, S, S]``, letterbox frame, or None)
        moved by the same affine (nearest neighbour: a mask stays binary); returns
        ``(canvas, boxes, labels, masks)``.  The random draws are those of :meth:`__call__`."""
        from torchvision import tv_tensors

        size = canvas.shape[-1]
        image = torch.from_numpy(canvas)[None]
        tv_boxes = tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(size, size))
        inputs = (image, tv_boxes) if masks is None else (image, tv_boxes, tv_tensors.Mask(torch.from_numpy(masks)))
        # torchvision samples from torch's global RNG; seed it from our generator so a
        # run is reproducible by --seed.  One call moves pixels, boxes and masks alike.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            image, tv_boxes, *moved = self.affine(*inputs)
        out_boxes = tv_boxes.as_subclass(torch.Tensor).clamp(0, size).numpy()
        keep = valid_boxes(out_boxes, min_size=2.0)  # boxes pushed out of the field are dropped
        out_masks = None if masks is None else moved[0].as_subclass(torch.Tensor).numpy()[keep]

        c = self.config
        u = torch.rand(4, generator=generator).numpy()
        x = image[0].numpy().clip(0, 1)
        x = x ** (c.gamma[0] + u[0] * (c.gamma[1] - c.gamma[0]))
        mean = float(x.mean())
        x = (x - mean) * (1 + (2 * u[1] - 1) * c.contrast) + mean + (2 * u[2] - 1) * c.brightness
        noise = torch.randn(x.shape, generator=generator).numpy() * c.noise_std * u[3]
        return (x + noise).clip(0, 1).astype(np.float32), out_boxes[keep], labels[keep], out_masks


class DetectionDataset(Dataset):
    """``(image [C, S, S] float32, target)`` pairs for torchvision detection models.

    target: ``boxes`` float32 ``[N, 4]`` xyxy in the letterbox frame, ``labels``
    int64 ``[N]`` (1-based), ``image_id`` int, ``record`` float32 ``[8]``
    (:meth:`LetterboxRecord.to_array`, maps boxes back to original pixels); with
    ``masks=True`` also ``masks`` uint8 ``[N, S, S]``, box ``i``'s instance mask in the
    letterbox frame (every box of every study must have one: ``Study.masks``).
    Letterboxed films (S x S float32) and masks (S x S uint8 each) are cached in memory
    after the first decode.
    """

    def __init__(
        self,
        studies: Sequence,
        labelset: LabelSet,
        preprocess: PreprocessConfig,
        *,
        augment: Augmenter | None = None,
        seed: int = 0,
        cache: bool = True,
        masks: bool = False,
    ) -> None:
        missing = [s.image_id for s in studies if s.path is None]
        if missing:
            raise MissingFileError(f"{len(missing)} studies have no image file, e.g. {missing[:3]}")
        unmasked = [s.image_id for s in studies if len(s.boxes) and (s.masks is None or s.masks.count < len(s.boxes))]
        if masks and unmasked:
            raise MissingFileError(
                f"{len(unmasked)} of {len(studies)} studies have boxes without instance masks, e.g. {unmasked[:3]}: "
                "the segment task needs a mask for every box (masks.json beside the data, `cxr synth` writes one; "
                "`cxr data info` counts the boxes with masks)")
        self.masks = masks
        self.studies = list(studies)
        self.labelset = labelset
        self.preprocess = preprocess
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        self._cache: dict[int, tuple[np.ndarray, LetterboxRecord]] = {} if cache else None
        self._mask_cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.studies)

    def load(self, index: int) -> tuple[np.ndarray, LetterboxRecord]:
        """Letterboxed film ``[S, S]`` in [0, 1] and its record (cached)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = decode_image(self.studies[index].path)
        item = letterbox(image.pixels, self.preprocess.size, pad_value=self.preprocess.pad_value, spacing_mm=image.spacing_mm)
        if self._cache is not None:
            self._cache[index] = item
        return item

    def load_masks(self, index: int) -> np.ndarray:
        """Study ``index``'s instance masks in the letterbox frame, uint8 ``[N, S, S]`` (cached).

        Each mask goes through :func:`cxr.preprocess.letterbox` like the film (antialiased
        bilinear) and is cut at 0.5, so it covers the canvas pixels the finding covers."""
        if self._mask_cache is not None and index in self._mask_cache:
            return self._mask_cache[index]
        study, size = self.studies[index], self.preprocess.size
        full = study.masks.stack() if study.masks is not None else np.zeros((0, 1, 1), bool)
        out = np.zeros((len(full), size, size), np.uint8)
        for i, m in enumerate(full):
            out[i] = letterbox(m.astype(np.float32), size, pad_value=0.0)[0] >= 0.5
        if self._mask_cache is not None:
            self._mask_cache[index] = out
        return out

    def __getitem__(self, index: int):
        study = self.studies[index]
        canvas, record = self.load(index)
        boxes = record.to_letterbox(study.boxes)
        labels = np.asarray(self.labelset.class_ids(study.box_labels), dtype=np.int64)
        masks = self.load_masks(index) if self.masks else None
        if self.augment is not None:
            canvas, boxes, labels, masks = self.augment.with_masks(canvas, boxes, labels, masks, self.generator)
        image = torch.from_numpy(normalize(canvas, self.preprocess))
        target = {
            "boxes": torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "labels": torch.from_numpy(labels.reshape(-1)),
            "image_id": index,
            "record": torch.from_numpy(record.to_array()),
        }
        if masks is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8)).reshape(-1, *canvas.shape)
        return image, target


def collate(batch):
    """Detection batches are lists (targets differ in length)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
