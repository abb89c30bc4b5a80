"""DICOM UIDs are named where they are used, never written out as strings: transfer syntaxes from
``pydicom.uid``, SOP classes in the client from ``pynetdicom.sop_class``; the decoders (cxr/decode)
never import pynetdicom, which is the PACS bridge's (the client extra).  Every file is scanned."""

from __future__ import annotations

import re
from pathlib import Path

import pydicom.uid

from cxr.decode.guards import FRAME_GUARDS

ROOT = Path(__file__).resolve().parents[2]
# A DICOM UID (the standard's root 1.2.840.10008) inside quotes.
UID_LITERAL = re.compile(r"""["']1\.2\.840\.10008\.[0-9.]*["']""")


def _product_files(*folders: str) -> list[Path]:
    files = [f for folder in folders for f in sorted((ROOT / folder).rglob("*.py"))]
    assert files, folders
    return files


def test_no_dicom_uid_is_written_out_in_the_core_or_the_client():
    offenders = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                 for path in _product_files("cxr", "client")
                 for n, line in enumerate(path.read_text().splitlines(), start=1) if UID_LITERAL.search(line)]
    assert not offenders, "name these UIDs with pydicom.uid / pynetdicom.sop_class:\n" + "\n".join(offenders)


def test_the_decoders_do_not_import_pynetdicom():
    importing = [path.name for path in _product_files("cxr/decode")
                 if re.search(r"^\s*(import|from)\s+pynetdicom", path.read_text(), re.MULTILINE)]
    assert not importing


def test_frame_guards_are_keyed_by_pydicom_transfer_syntax_names():
    for keyword in FRAME_GUARDS:
        assert getattr(pydicom.uid, keyword).is_transfer_syntax, keyword
