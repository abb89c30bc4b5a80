"""DICOM networking helpers shared by the PACS tests: a receiving PACS and a storescu.

Imported as ``dicomnet`` (pytest puts ``tests/`` on ``sys.path`` for its conftest).
"""

from __future__ import annotations

import pydicom
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
)

from cxr.client.pacs import COMPREHENSIVE_3D_SR, GSPS
from cxr.triton_server import free_port

SENDER = "MODALITY1"


class Destination:
    """A receiving PACS: a Storage SCP for SR and GSPS that keeps what it gets."""

    def __init__(self, port: int | None = None, ae_title: str = "PACS") -> None:
        self.port = port or free_port()
        self.received: list[pydicom.Dataset] = []
        self._ae = AE(ae_title=ae_title)
        self._ae.add_supported_context(COMPREHENSIVE_3D_SR)
        self._ae.add_supported_context(GSPS)
        self._server = None

    def _on_store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        self.received.append(ds)
        return 0x0000

    def start(self) -> Destination:
        self._server = self._ae.start_server(("127.0.0.1", self.port), block=False,
                                             evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> Destination:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def send(port: int, datasets, *, calling: str = SENDER, called: str = "CXR"):
    """C-STORE each dataset (or file) as storescu would; None when the association is refused."""
    ae = AE(ae_title=calling)
    for uid in (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation, SecondaryCaptureImageStorage):
        ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        return [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()
