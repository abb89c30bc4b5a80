"""PIXELS through system shared memory (``use_shared_memory=True``: a server on the same host)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import tritonclient.utils.shared_memory as shm

from cxr.client.errors import CONVERTIBLE, to_detector_error
from cxr.client.requests import PIXELS, ModelSpec, Request


@contextlib.contextmanager
def local_region(request: Request, spec: ModelSpec) -> Iterator[tuple[str, int]]:
    """A system shared-memory region holding PIXELS, as ``(name, size)``; destroyed on exit, even on error.

    Both clients register it with the server before the call and unregister it after.
    """
    data = next(spec.tensor(t)[2] for t in request.inputs if t.name == PIXELS)
    name = f"cxr_client_{os.getpid()}_{uuid.uuid4().hex[:12]}"
    try:
        handle = shm.create_shared_memory_region(name, "/" + name, data.nbytes)
    except CONVERTIBLE as exc:
        raise to_detector_error(exc) from exc
    try:
        shm.set_shared_memory_region(handle, [data])
        yield name, data.nbytes
    except CONVERTIBLE as exc:
        raise to_detector_error(exc) from exc
    finally:
        with contextlib.suppress(*CONVERTIBLE):
            shm.destroy_shared_memory_region(handle)
