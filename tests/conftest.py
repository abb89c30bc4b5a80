"""Shared fixtures: locations of the real reference files that installed packages ship."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pydicom_test_files() -> Path:
    """pydicom's shipped test files (listed directly: get_testdata_files would try the network)."""
    import pydicom

    return Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="session")
def real_cr_files(pydicom_test_files) -> list[Path]:
    """Real CR MONOCHROME1 DICOM images from pydicom's dicomdirtests."""
    files = sorted((pydicom_test_files / "dicomdirtests" / "77654033").glob("CR*/*"))
    assert files, "pydicom no longer ships its CR test images"
    return files
