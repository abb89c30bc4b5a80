"""Start and stop the embedded ``tritonserver`` that the ``nvidia-pytriton`` wheel ships.

The wheel carries Triton 2.51 (Python backend, ensembles; CPU) under
``pytriton/tritonserver/``.  It needs its bundled libraries on ``LD_LIBRARY_PATH``
and the Python backend stub built for the running Python next to the backend, so
:func:`prepare_backends` assembles a backend directory in a cache folder (the wheel
itself is never modified).  The Python models import ``cxr`` and the venv's
packages, so the server gets this interpreter's ``sys.path`` as ``PYTHONPATH``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cxr.errors import UsageError

log = logging.getLogger(__name__)

TARGETS = ("cpu", "gpu-onnx", "gpu-trt")


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TritonServer:
    """A tritonserver process; use as a context manager or call start()/stop()."""

    model_repository: Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    target: str = "cpu"
    precision: str = "fp32"
    log_file: Path | None = None
    models: tuple[str, ...] = ()  # explicit model control: load only these (empty = all)
    env: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def command(self, install: TritonInstall) -> list[str]:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; choose one of: {', '.join(TARGETS)}")
        cmd = [
            str(install.binary), f"--model-repository={Path(self.model_repository).resolve()}",
            f"--backend-directory={install.backend_dir}", f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}", f"--grpc-address={self.host}", f"--http-address={self.host}",
            "--allow-sagemaker=false", "--allow-vertex-ai=false", "--strict-readiness=true", "--exit-timeout-secs=10",
            "--model-control-mode=explicit",
        ]
        if self.target != "cpu":
            cmd.append(f"--model-config-name={self.target}")
        models = self.models or ("cxr_detector",)  # the ensemble pulls in its three steps
        cmd += [f"--load-model={m}" for m in models]
        return cmd

    def start(self, *, timeout: float = 120.0) -> TritonServer:
        repo = Path(self.model_repository)
        if not (repo / "cxr_detector" / "config.pbtxt").is_file():
            raise UsageError(f"{repo} is not a cxr model repository (no cxr_detector/config.pbtxt)")
        if self.target == "cpu" and not (repo / "detector" / "1" / ("model.int8.onnx" if self.precision == "int8" else "model.onnx")).is_file():
            kind = "onnx-int8" if self.precision == "int8" else "onnx"
            raise UsageError(f"{repo}/detector/1 has no exported model: run `cxr export {kind} --checkpoint CKPT --repository {repo}`")
        install = prepare_backends()
        if self.target != "cpu":
            backend = "onnxruntime" if self.target == "gpu-onnx" else "tensorrt"
            if not (install.backend_dir / backend).is_dir():
                raise UsageError(
                    f"target {self.target} needs Triton's {backend} backend, which the embedded server does not have; "
                    "run the NGC tritonserver container (deploy/Dockerfile) or use --target cpu"
                )
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install.lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        # The stub's embedded interpreter finds its prefix (and so the venv's
        # site-packages) through the python on PATH: put this interpreter's first,
        # or a non-activated venv (CI, `make`) loads models without numpy.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["CXR_DETECTOR_PRECISION"] = self.precision
        env.update(self.env)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        log.info("starting %s", " ".join(self.command(install)))
        self.process = subprocess.Popen(self.command(install), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                hint = f"; see {self.log_file}" if self.log_file else ""
                raise UsageError(f"tritonserver exited with status {self.process.returncode} during start-up{hint}")
            if self.ready():
                return
            time.sleep(0.25)
        raise UsageError(f"tritonserver was not ready after {timeout:.0f} s" + (f"; see {self.log_file}" if self.log_file else ""))

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL after ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        except ProcessLookupError:
            pass

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
