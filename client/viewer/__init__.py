"""The results where radiologists look: OHIF over Orthanc's DICOMweb, on loopback, in one command.

* :mod:`~cxr.client.viewer.ohif` — the pinned OHIF build: fetched at set-up (``cxr viewer
  fetch``: ``npm pack``, SHA-512 checked, cached), prepared to be served under ``/ohif/``.
* :mod:`~cxr.client.viewer.server` — :class:`ViewerServer`: an Orthanc serving that build and
  DICOMweb on one origin, ``127.0.0.1`` only (a private network namespace reached through
  :mod:`~cxr.client.viewer.relay`).
* :mod:`~cxr.client.viewer.cli` — ``cxr viewer fetch`` and ``cxr viewer serve PATH...``.

What a viewer needs from the objects themselves is checked where they are written:
:mod:`cxr.client.dicom_out.viewers`.  Standard library, pydicom and Orthanc only.
"""

from __future__ import annotations

from cxr.client.viewer.server import ViewerServer

__all__ = ["ViewerServer"]
