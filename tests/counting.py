"""What reading a study costs, counted: file opens, DICOM parses, pixel decodes, format sniffs
and transfer-syntax judgements.

The real functions run.  Each is wrapped (through pytest's ``monkeypatch``, undone after
the test) only to count its calls; file opens are seen through Python's audit event
``open``, which ``open()``, ``Path.read_bytes()`` and ``os.open()`` all raise, whoever
calls them.  Imported as ``counting`` (pytest puts ``tests/`` on ``sys.path``)::

    with counting(monkeypatch) as costs:
        main(["predict", str(study), ...])
    assert costs.opens(study) == 1 and costs["parse"] == 1
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_ACTIVE: list[Costs] = []


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not _ACTIVE:  # inert unless a test is counting
        return
    path = args[0]
    if isinstance(path, (str, bytes, os.PathLike)):
        _ACTIVE[-1][f"open:{os.path.realpath(os.fsdecode(path))}"] += 1


sys.addaudithook(_audit)  # once per process (audit hooks cannot be removed)


class Costs(Counter):
    """Counts by kind: ``parse`` (pydicom parses, header-only ones included), ``dicom_decode``
    (DICOM pixel data decoded), ``pil_decode`` (PNG/JPEG pixels decoded), ``sniff`` (format
    sniffed from magic bytes), ``judge`` (a transfer syntax's decoders looked up), and
    ``open:<path>`` per file opened."""

    def opens(self, path: str | os.PathLike) -> int:
        return self[f"open:{os.path.realpath(path)}"]


def _counted(costs: Costs, key: str, fn: Callable, when: Callable[..., bool] | None = None) -> Callable:
    def wrapper(*args, **kwargs):
        if when is None or when(*args, **kwargs):
            costs[key] += 1
        return fn(*args, **kwargs)

    return wrapper


@contextmanager
def counting(monkeypatch) -> Iterator[Costs]:
    """Count, in this process, what the code inside the block costs (see :class:`Costs`)."""
    import pydicom.dataset
    import pydicom.filereader
    from PIL import ImageFile

    from cxr.decode import header, transfer_syntaxes

    costs = Costs()
    # dcmread parses through read_partial, however dcmread itself was imported.
    monkeypatch.setattr(pydicom.filereader, "read_partial", _counted(costs, "parse", pydicom.filereader.read_partial))
    # Dataset.pixel_array decodes through this function, and only when nothing is cached.
    monkeypatch.setattr(pydicom.dataset, "pixel_array", _counted(costs, "dicom_decode", pydicom.dataset.pixel_array))
    # ImageFile.load decodes while the image still has tiles to read; later calls return at once.
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        _counted(costs, "pil_decode", ImageFile.ImageFile.load, when=lambda im: bool(im.tile)))
    monkeypatch.setattr(header, "sniff_format", _counted(costs, "sniff", header.sniff_format))
    monkeypatch.setattr(transfer_syntaxes, "available_plugins",
                        _counted(costs, "judge", transfer_syntaxes.available_plugins))
    _ACTIVE.append(costs)
    try:
        yield costs
    finally:
        _ACTIVE.remove(costs)

