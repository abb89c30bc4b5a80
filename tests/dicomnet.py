"""The PACS tests' sending modality and receiving PACS, played by dcmtk (``storescu``/``storescp``).

Imported as ``dicomnet`` (pytest puts ``tests/`` on ``sys.path`` for its conftest).
The bridge is built with pynetdicom; what proves it works are independent peers
(:mod:`peers`): a test without dcmtk skips with the install command, and fails
under ``CI=true``.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import pydicom

from peers import StoreSCP, storescu

SENDER = "MODALITY1"


class Destination(StoreSCP):
    """A receiving PACS for SR and GSPS (dcmtk storescp) that keeps what it gets; not started until used."""

    def __init__(self, port: int | None = None, ae_title: str = "PACS") -> None:
        root = Path(tempfile.mkdtemp(prefix="cxr-dest-"))
        super().__init__(root / "received", ae_title=ae_title, port=port)
        weakref.finalize(self, shutil.rmtree, root, True)



def send(port: int, datasets, *, calling: str = SENDER, called: str = "CXR"):
    """C-STORE each dataset (or file) with dcmtk's storescu; the statuses, or None when the association is refused."""
    with tempfile.TemporaryDirectory(prefix="cxr-send-") as tmp:
        files = []
        for i, item in enumerate(datasets):
            if isinstance(item, pydicom.Dataset):
                path = Path(tmp) / f"{i}.dcm"
                item.save_as(path, enforce_file_format=True)
                files.append(path)
            else:
                files.append(Path(item))
        return storescu(port, files, calling=calling, called=called)


def referenced_uids(ds: pydicom.Dataset) -> set[str]:
    """Every ReferencedSOPInstanceUID anywhere in ``ds`` (evidence, image library, regions)."""
    found: set[str] = set()

    def visit(d: pydicom.Dataset) -> None:
        for elem in d:
            if elem.keyword == "ReferencedSOPInstanceUID":
                found.add(str(elem.value))
            elif elem.VR == "SQ":
                for item in elem.value:
                    visit(item)

    visit(ds)
    return found
