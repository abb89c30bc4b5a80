"""The Triton model repository: artifact placement and metadata stamping.

Layout (``model_repository/``)::

    detector/1/model.onnx        FP32 ONNX            (build output, git-ignored)
    detector/1/model.int8.onnx   INT8 ONNX (CPU)      (build output, git-ignored)
    detector/1/model.plan        TensorRT FP16 engine (build output, git-ignored)
    cxr-metadata.json            what was exported: class list, input size, preprocessing,
                                 model version, per artifact (written by ``cxr export``)

Placing an artifact whose metadata differs from the one already there (another
model version, class list or input size) is refused unless ``force=True``: a
half-updated repository would serve boxes from one model with labels of another.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cxr.contract import EXPLAIN, SEGMENT_POSTPROCESS, Artifact, Step
from cxr.errors import UsageError

METADATA_FILE = "cxr-metadata.json"
# Fields that must agree between artifacts of one repository.
IDENTITY_FIELDS = ("model_version", "class_names", "preprocess", "model")


# The committed repository (model.py adapters + default configs) in the source tree.
TEMPLATE = Path(__file__).resolve().parents[1] / "model_repository"
# Every step has a model.py adapter (the GPU detector configs ignore its), and so has cxr_explain.
PYTHON_MODELS = (*Step, EXPLAIN)


class RepositoryConflict(UsageError):
    """The repository already holds an artifact of a different model."""


def artifact_path(repository: str | Path, kind: Artifact | str) -> Path:
    return Path(repository) / Artifact(kind).path  # an unknown kind: InvalidOptionError listing the kinds


def read_repository_metadata(repository: str | Path) -> dict:
    path = Path(repository) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _identity(meta: dict) -> dict:
    return {k: meta.get(k) for k in IDENTITY_FIELDS}


def check_compatible(repository: str | Path, meta: dict, *, force: bool = False) -> None:
    """Raise :class:`RepositoryConflict` if the repository holds another model's artifacts."""
    existing = read_repository_metadata(repository)
    if not existing or force:
        return
    old, new = _identity(existing), _identity(meta)
    diffs = [k for k in IDENTITY_FIELDS if old.get(k) is not None and old.get(k) != new.get(k)]
    present = [k for k in existing.get("artifacts", {}) if artifact_path(repository, k).exists()]
    if diffs and present:
        detail = ", ".join(f"{k}: {_short(old[k])} -> {_short(new[k])}" for k in diffs)
        raise RepositoryConflict(
            f"{repository} already holds {', '.join(present)} of another model ({detail}); "
            "pass --force to replace them (the other artifacts are then removed), or use another --repository"
        )


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def place_artifact(repository: str | Path, kind: Artifact | str, source: str | Path, meta: dict, *, force: bool = False, extra: dict | None = None) -> Path:
    """Copy ``source`` into the repository as artifact ``kind`` and record its metadata.

    With ``force`` and a different model, the other model's artifacts are removed so
    the repository never mixes two models.
    """
    repository = Path(repository)
    check_compatible(repository, meta, force=force)
    existing = read_repository_metadata(repository)
    if force and existing and _identity(existing) != _identity(meta):
        for other in existing.get("artifacts", {}):
            artifact_path(repository, other).unlink(missing_ok=True)
        existing = {}
    dest = artifact_path(repository, kind)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if Path(source).resolve() != dest.resolve():
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(dest)
    artifacts = dict(existing.get("artifacts", {}))
    kind = Artifact(kind)
    artifacts[kind.value] = {"file": kind.path, "bytes": dest.stat().st_size, **(extra or {})}
    record = {**_identity(meta), **{k: meta[k] for k in ("task", "labelset", "postprocess", "thresholds", "data_fingerprint") if k in meta}}
    record["artifacts"] = artifacts
    (repository / METADATA_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return dest


def ensure_repository(repository: str | Path, meta: dict) -> Path:
    """Make ``repository`` a complete Triton repository for ``meta``.

    Copies the Python model adapters from the source tree when the folder is not
    the committed one, and renders every ``config.pbtxt`` with ``meta`` stamped
    into its parameters.  A Mask R-CNN (``meta["task"] == "segment"``) also gets the
    ``cxr_segment`` ensemble and its ``segment_postprocess`` step.
    """
    from cxr.export.triton_config import is_segment, write_configs

    repository = Path(repository)
    if repository.resolve() != TEMPLATE.resolve():
        for model in (*PYTHON_MODELS, *((SEGMENT_POSTPROCESS,) if is_segment(meta) else ())):
            src = TEMPLATE / model / "1" / "model.py"
            if not src.is_file():
                raise UsageError(f"model adapters not found at {src}: serving needs a source checkout of cxr-triton")
            dst = repository / model / "1" / "model.py"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    write_configs(repository, meta)
    return repository
