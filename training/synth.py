"""Synthetic chest radiographs in NIH ChestX-ray14's published layout.

``cxr synth OUT`` writes a small data set that every later stage (training, export,
serving, benchmarks) can run on without downloading anything::

    OUT/images/{patient:08d}_{followup:03d}.png     grayscale, size x size (8- or 16-bit)
    OUT/Data_Entry_2017.csv                         image-level labels, NIH's header
    OUT/BBox_List_2017.csv                          boxes, xywh, "Infiltrate" spelling
    OUT/masks.json                                  with ``masks=True`` (default): one instance
                                                    mask per box, COCO RLE (cxr.training.masks)
    OUT/train_val_list.txt, OUT/test_list.txt       split by patient
    OUT/dicom/{stem}.dcm                            with ``dicom=True`` (CR/DX, MONOCHROME1/2)
    OUT/preview.png                                 with ``preview=True``: a contact sheet
    OUT/synth.json                                  the config; marks OUT as ours to overwrite

Same seed, same bytes.  Anatomy lives in :mod:`cxr.training.synth_anatomy`, finding
placement and appearance in :mod:`cxr.training.synth_findings`, one film in
:mod:`cxr.training.synth_render`, and what region a finding's mask is in
:mod:`cxr.training.synth_masks`.  The masks are in the pixel grid of the PNGs; the DICOM
copies have the same grid (Rows x Columns = size x size, same pixel order, no flip or
crop), so the same masks fit them (``masks.json`` names each image's DICOM file).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from cxr.boxes import xyxy_to_xywh
from cxr.errors import InvalidOptionError
from cxr.labels import NIH_NO_FINDING, LabelSetName
from cxr.training.coco import to_coco
from cxr.training.masks import MASKS_FILE, InstanceMasks, encode_mask, round_bboxes, write_masks_file
from cxr.training.studies import Study
from cxr.training.synth_anatomy import Anatomy
from cxr.training.synth_findings import sample_findings
from cxr.training.synth_render import render_study, render_study_with_masks

DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
PIXEL_SPACING_MM = 0.143  # the most common spacing in NIH's Data_Entry_2017.csv
MARKER = "synth.json"
_BBOX_SPELLING = {"Infiltration": "Infiltrate"}  # as BBox_List_2017.csv writes it


@dataclass
class SynthConfig:
    """What ``cxr synth`` generates; :func:`generate` validates it."""

    images: int = 200  # enough for a CPU demo model to learn something in minutes
    seed: int = 0  # same seed -> byte-identical PNGs and CSVs
    size: int = 1024  # NIH images are 1024x1024 as released
    bit_depth: int = 8  # 8 or 16 (16-bit PNG, full 0..65535 range used)
    no_finding_fraction: float = 0.3  # NIH has 54%; fewer normals give more boxes to learn
    max_images_per_patient: int = 4  # follow-ups, so a patient-level split matters
    test_fraction: float = 0.2  # of patients, like NIH's official ~20% test split
    dicom: bool = False  # also write DICOM Part 10 files (CR/DX, MONOCHROME1/2)
    preview: bool = False  # also write preview.png, a contact sheet with boxes
    masks: bool = True  # also write masks.json: each finding's drawn pixels (~15% more time)

    def validate(self) -> None:
        """Raise ValueError naming the bad field, what it got and what is allowed."""
        checks = [
            (isinstance(self.images, int) and self.images >= 1, "images", "an integer >= 1"),
            (isinstance(self.size, int) and self.size >= 128, "size", "an integer >= 128 (NIH is 1024)"),
            (self.bit_depth in (8, 16), "bit_depth", "8 or 16"),
            (0.0 <= self.no_finding_fraction <= 1.0, "no_finding_fraction", "between 0 and 1"),
            (isinstance(self.max_images_per_patient, int) and self.max_images_per_patient >= 1,
             "max_images_per_patient", "an integer >= 1"),
            (0.0 <= self.test_fraction < 1.0, "test_fraction", "in [0, 1)"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise InvalidOptionError(f"SynthConfig.{name} must be {allowed}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SynthStudy:
    """One generated image and its truth; ``boxes`` xyxy float32 ``[N, 4]`` in pixels."""

    patient: int
    followup: int
    age: int
    sex: str
    view: str
    findings: tuple[tuple[str, np.ndarray], ...]

    @property
    def name(self) -> str:
        return f"{self.patient:08d}_{self.followup:03d}.png"


# --- the data set -------------------------------------------------------------------


def plan_studies(cfg: SynthConfig) -> list[SynthStudy]:
    """Patients, follow-ups, demographics and findings for ``cfg.images`` studies."""
    rng = np.random.default_rng([cfg.seed, 0])
    studies: list[SynthStudy] = []
    patient = 0
    while len(studies) < cfg.images:
        patient += 1  # NIH patient ids start at 1
        count = min(cfg.max_images_per_patient, int(rng.geometric(0.45)), cfg.images - len(studies))
        age = int(np.clip(rng.normal(47, 16), 18, 90))  # NIH: mean 46.6, std 16.6
        sex = "M" if rng.random() < 0.56 else "F"  # NIH: 56% male
        anatomy = Anatomy.sample(np.random.default_rng(_anatomy_seed(cfg.seed, patient)))
        prior: tuple = ()
        for followup in range(count):
            if rng.random() < cfg.no_finding_fraction:
                findings: tuple = ()
            elif prior and rng.random() < 0.5:  # follow-up of a known finding, moved a little
                jitter = cfg.size * 0.01
                findings = tuple((c, np.round(b + rng.normal(0, jitter, 4), 2).astype(np.float32)) for c, b in prior)
                findings = tuple((c, np.clip(b, 0, cfg.size)) for c, b in findings)
            else:
                findings = tuple(sample_findings(rng, size=cfg.size, anatomy=anatomy))
            prior = findings or prior
            view = "PA" if rng.random() < 0.6 else "AP"  # NIH: 60% PA
            studies.append(SynthStudy(patient, followup, age + followup // 2, sex, view, findings))
    return studies


def split_patients(studies: list[SynthStudy], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train_val, test) image names; a patient's images all go to one side."""
    patients = sorted({s.patient for s in studies})
    order = np.random.default_rng([seed, 2]).permutation(len(patients))
    n_test = int(round(test_fraction * len(patients)))
    if test_fraction > 0 and len(patients) >= 2:
        n_test = min(max(n_test, 1), len(patients) - 1)  # both lists non-empty when possible
    test = {patients[i] for i in order[:n_test]}
    return [s.name for s in studies if s.patient not in test], [s.name for s in studies if s.patient in test]


def _prepare_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidOptionError(f"output {out} exists and is not a folder; choose a new folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise InvalidOptionError(
            f"output folder {out} is not empty and holds no {MARKER}, so it was not written by "
            "`cxr synth`; refusing to write into it. Choose a new or empty folder."
        )
    # A previous synth output: remove what we wrote (and only that), so no stale images stay.
    for pattern in ("images/*.png", "dicom/*.dcm"):
        for p in out.glob(pattern):
            p.unlink()
    for name in ("Data_Entry_2017.csv", "BBox_List_2017.csv", "train_val_list.txt", "test_list.txt", "preview.png",
                 MASKS_FILE, MARKER):
        (out / name).unlink(missing_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def generate(out: Path | str, cfg: SynthConfig, *, progress: bool = True) -> Path:
    """Write a synthetic NIH-layout data set to ``out`` (see the module docstring); returns ``out``.

    Raises ValueError for a bad ``cfg`` or when ``out`` is a non-empty folder that a
    previous run of this generator did not write.
    """
    cfg.validate()
    out = Path(out)
    _prepare_out(out)
    studies = plan_studies(cfg)
    thumbs: list[tuple[Image.Image, SynthStudy]] = []
    if cfg.dicom:
        (out / "dicom").mkdir(exist_ok=True)
    masked: list[Study] = []
    for study in tqdm(studies, desc="synth", unit="img", disable=not progress):
        rng = np.random.default_rng([cfg.seed, study.patient, study.followup, 3])
        args = dict(size=cfg.size, anatomy_seed=_anatomy_seed(cfg.seed, study.patient))
        if cfg.masks:  # the same picture: the masks draw no random numbers
            img, masks = render_study_with_masks(rng, list(study.findings), **args)
            masked.append(_masked_study(study, masks, cfg.size))
        else:
            img = render_study(rng, list(study.findings), **args)
        if cfg.bit_depth == 16:
            pixels = np.round(img * 65535).astype(np.uint16)
            Image.fromarray(pixels).save(out / "images" / study.name)  # mode I;16
        else:
            Image.fromarray(np.round(img * 255).astype(np.uint8), "L").save(out / "images" / study.name)
        if cfg.dicom:
            write_dicom(out / "dicom" / (study.name[:-4] + ".dcm"), img, study, seed=cfg.seed)
        if cfg.preview and study.findings and len(thumbs) < 12:
            thumbs.append((Image.fromarray(np.round(img * 255).astype(np.uint8), "L").resize((320, 320), Image.BILINEAR), study))

    with open(out / "Data_Entry_2017.csv", "w", newline="") as fh:
        fh.write(DATA_ENTRY_HEADER + "\n")
        w = csv.writer(fh, lineterminator="\n")
        for s in studies:
            labels = "|".join(sorted({c for c, _ in s.findings})) or NIH_NO_FINDING
            w.writerow([s.name, labels, s.followup, s.patient, s.age, s.sex, s.view,
                        cfg.size, cfg.size, PIXEL_SPACING_MM, PIXEL_SPACING_MM])
    with open(out / "BBox_List_2017.csv", "w", newline="") as fh:
        fh.write(BBOX_HEADER + "\n")
        w = csv.writer(fh, lineterminator="\n")
        for s in studies:
            for c, box in s.findings:
                x, y, bw, bh = (float(v) for v in xyxy_to_xywh(box)[0])
                w.writerow([s.name, _BBOX_SPELLING.get(c, c), _fmt(x), _fmt(y), _fmt(bw), _fmt(bh)])
    if cfg.masks:
        _write_masks(out / MASKS_FILE, masked, dicom=cfg.dicom)
    train, test = split_patients(studies, cfg.test_fraction, cfg.seed)
    (out / "train_val_list.txt").write_text("".join(n + "\n" for n in train))
    (out / "test_list.txt").write_text("".join(n + "\n" for n in test))
    if cfg.preview:
        contact_sheet(thumbs, cfg.size).save(out / "preview.png")
    marker = {"generator": "cxr.training.synth", "note": "synthetic images, no patient data", "config": asdict(cfg)}
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return out


def _masked_study(study: SynthStudy, masks: list[np.ndarray], size: int) -> Study:
    """The study as the NIH reader will see it, with its findings' masks as RLE."""
    return Study(
        image_id=study.name, path=None, patient_id=str(study.patient),
        findings=tuple(sorted({c for c, _ in study.findings})),
        boxes=np.stack([b for _, b in study.findings]) if study.findings else None,
        box_labels=tuple(c for c, _ in study.findings), width=size, height=size,
        masks=InstanceMasks(tuple(encode_mask(m) for m in masks), size, size),
    )


def _write_masks(path: Path, studies: list[Study], *, dicom: bool) -> None:
    # bbox rounded as BBox_List_2017.csv writes it: the file states the CSV's very boxes.
    coco = round_bboxes(to_coco(studies, LabelSetName.NIH_BBOX))
    coco["info"]["description"] = "cxr synth instance masks: each finding's drawn pixels (cxr.training.synth_masks)"
    if dicom:  # same Rows x Columns and pixel order as the PNG: the masks fit both
        for image in coco["images"]:
            image["dicom_file_name"] = "dicom/" + image["file_name"][:-4] + ".dcm"
    write_masks_file(path, coco)


def _anatomy_seed(seed: int, patient: int) -> int:
    return int(np.random.default_rng([seed, patient, 1]).integers(2**62))


# --- DICOM --------------------------------------------------------------------------

_CR, _DX = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"  # CR; DX For Presentation


def write_dicom(path: Path, img: np.ndarray, study: SynthStudy, *, seed: int) -> None:
    """Write ``img`` (float32 ``[H, W]`` in 0..1, bright = dense) as a DICOM Part 10 file.

    12 bits stored in 16, Explicit VR Little Endian.  CR vs DX and MONOCHROME1 vs 2 are
    drawn per study so readers meet both; MONOCHROME1 stores ``4095 - value``, so a
    reader that inverts it recovers the PNG's picture.  Identifiers are fake but shaped
    like real ones (for tests that PHI never reaches logs); UIDs are derived from the
    seed and image name, so the same seed gives the same UIDs.
    """
    import pydicom  # imported here: only the --dicom path needs it
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng([seed, study.patient, study.followup, 4])
    dx = bool(rng.random() < 0.5)
    mono1 = bool(rng.random() < 0.5)
    stem = study.name[:-4]
    uid = lambda kind: generate_uid(entropy_srcs=["cxr-synth", str(seed), stem, kind])  # noqa: E731
    stored = np.round(img * 4095).astype(np.uint16)
    if mono1:
        stored = (4095 - stored).astype(np.uint16)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX if dx else _CR
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.Modality = "DX" if dx else "CR"
    ds.PatientName = f"SYNTH^PATIENT{study.patient:08d}"
    ds.PatientID = f"SYN{study.patient:08d}"
    ds.PatientBirthDate = f"{2017 - study.age:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    ds.PatientSex = study.sex
    ds.PatientAge = f"{study.age:03d}Y"
    ds.AccessionNumber = f"A{study.patient:08d}{study.followup:03d}"[-16:]
    ds.StudyID = f"{study.followup + 1}"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = f"2017{1 + study.followup % 12:02d}15"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.ReferringPhysicianName = "SYNTH^REFERRER"
    ds.InstitutionName = "cxr-triton synthetic"
    ds.Manufacturer = "cxr-triton synth"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = study.view
    ds.PatientOrientation = ["L", "F"]  # columns run to the patient's left, rows to the feet
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    else:
        ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096  # the whole 12-bit range
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


# --- preview ------------------------------------------------------------------------

_COLOURS = {
    "Atelectasis": (255, 99, 71), "Cardiomegaly": (255, 215, 0), "Effusion": (30, 144, 255),
    "Infiltration": (50, 205, 50), "Mass": (255, 0, 255), "Nodule": (0, 255, 255),
    "Pneumonia": (255, 140, 0), "Pneumothorax": (173, 255, 47),
}


def contact_sheet(thumbs: list[tuple[Image.Image, SynthStudy]], size: int, cols: int = 4) -> Image.Image:
    """A grid of thumbnails (RGB) with each study's boxes drawn and labelled."""
    tile = 320
    rows = max(1, math.ceil(len(thumbs) / cols))
    sheet = Image.new("RGB", (cols * tile, rows * tile), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    k = tile / size
    for i, (thumb, study) in enumerate(thumbs):
        ox, oy = (i % cols) * tile, (i // cols) * tile
        sheet.paste(thumb.convert("RGB"), (ox, oy))
        draw.text((ox + 4, oy + 3), study.name, fill=(255, 255, 255), font=font)
        for c, box in study.findings:
            x1, y1, x2, y2 = (float(v) * k for v in box)
            col = _COLOURS.get(c, (255, 255, 255))
            draw.rectangle([ox + x1, oy + y1, ox + x2, oy + y2], outline=col, width=2)
            draw.text((ox + x1 + 2, oy + max(y1 - 15, 0)), c, fill=col, font=font)
    return sheet
