"""Where the embedded ``tritonserver`` lives: the ``nvidia-pytriton`` wheel's binary and a backend folder.

The wheel carries Triton 2.51 (Python backend, ensembles; CPU) under
``pytriton/tritonserver/``.  It needs its bundled libraries on ``LD_LIBRARY_PATH``
and the Python backend stub built for the running Python next to the backend, so
:func:`prepare_backends` assembles a backend directory in a cache folder (the wheel
itself is never modified).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import UsageError


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    lib_dir: Path
    backend_dir: Path


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise UsageError("the embedded Triton server needs the serve extra: pip install 'cxr-triton[serve]'") from exc
    return Path(pytriton.__file__).resolve().parent


def prepare_backends(cache: Path | None = None) -> TritonInstall:
    """Locate the wheel's tritonserver and assemble ``backends/python`` with our stub."""
    root = _pytriton_root()
    server = root / "tritonserver"
    binary = server / "bin" / "tritonserver"
    libs = root.parent / "nvidia_pytriton.libs"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not binary.is_file():
        raise UsageError(f"tritonserver binary not found at {binary}; reinstall nvidia-pytriton")
    if not stub.is_file():
        raise UsageError(f"no Triton Python backend stub for Python {version} in {stub.parent.parent}")
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cxr-triton" / f"backends-py{version}"
    target = cache / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in [*(server / "backends" / "python").glob("*.*"), stub]:
        dst = target / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    return TritonInstall(binary=binary, lib_dir=libs, backend_dir=cache)
