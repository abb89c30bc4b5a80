"""The client tests are the ones that build DICOM SR and GSPS (directly, through `cxr predict`
and inside the PACS bridge): each of them has every SR/GSPS it builds checked by dciodvfy."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _every_sr_and_gsps_passes_dciodvfy(sr_and_gsps_pass_dciodvfy):
    """See tests/conftest.py:sr_and_gsps_pass_dciodvfy."""

