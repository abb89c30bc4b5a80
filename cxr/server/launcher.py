"""Start and stop the embedded ``tritonserver`` that the ``nvidia-pytriton`` wheel ships
(:mod:`cxr.server.install` finds it).  The Python models import ``cxr`` and the venv's
packages, so the server gets this interpreter's ``sys.path`` as ``PYTHONPATH``.

Exposure: every endpoint binds to loopback unless ``host`` says otherwise.  gRPC
can use TLS, or mutual TLS when a client CA is given (``tls_cert``/``tls_key``/
``tls_ca``).  Triton's HTTP endpoint has no TLS of its own (it is meant to sit
behind a reverse proxy), so with TLS on, HTTP and metrics stay on 127.0.0.1 even
when gRPC binds a public address: the only port reachable from the network is
the encrypted one.  Binding a non-loopback address without TLS logs a warning.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cxr.contract import (
    ENSEMBLE, EXPLAIN, GRPC_PORT, HTTP_PORT, METRICS_PORT, PRECISION_ENV, SEGMENT, Precision, ServeTarget, Step,
)
from cxr.machine import cpu_info, isa_line
from cxr.serving.paths import AUTO, FALLBACK, RUNTIME_ENV, Choice, choose, path_named, random_inputs, time_path
from cxr.errors import InvalidOptionError, UsageError
from cxr.server.install import TritonInstall, prepare_backends
from cxr.server.net import free_ports, host_port, is_loopback
from cxr.server.tls import TlsMode, check_pem

log = logging.getLogger(__name__)

TARGETS = ServeTarget.values()


@dataclass
class TritonServer:
    """A tritonserver process; use as a context manager or call start()/stop()."""

    model_repository: Path
    grpc_port: int = GRPC_PORT
    http_port: int = HTTP_PORT
    metrics_port: int = METRICS_PORT
    host: str = "127.0.0.1"
    target: ServeTarget | str = ServeTarget.CPU
    precision: Precision | str | None = None  # legacy pin of the cpu detector: fp32 | int8 = path ort-fp32 | ort-int8
    path: str = AUTO  # the cpu detector's runtime x precision (cxr.serving.paths): auto = fastest that passed parity
    log_file: Path | None = None
    models: tuple[str, ...] = ()  # explicit model control: load only these (empty = cxr_detector and cxr_explain)
    env: dict = field(default_factory=dict)
    process: subprocess.Popen | None = None
    # gRPC TLS (PEM files): cert + key turn TLS on; a client CA as well makes it
    # mutual (clients must present a certificate that CA signed).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    log_verbose: int = 0  # Triton's --log-verbose level (0 = off)

    def __post_init__(self) -> None:
        # Normalise on entry: a bad target or precision fails here (InvalidOptionError), before anything starts.
        self.target = ServeTarget(self.target)
        if self.precision is not None:
            self.precision = Precision(self.precision)
            if self.target is ServeTarget.CPU and self.precision not in (Precision.FP32, Precision.INT8):
                raise InvalidOptionError(f"the cpu target runs fp32 or int8 ONNX, not {self.precision}")
            if self.path != AUTO:
                raise InvalidOptionError(f"give --path or --precision, not both (--precision {self.precision} is "
                                         f"--path ort-{self.precision})")
            self.path = f"ort-{self.precision}"
        if self.path != AUTO:
            path_named(self.path)  # an unknown name fails here
        self.choice: Choice | None = None  # what start() serves on the cpu target, and why

    @classmethod
    def on_free_ports(cls, model_repository: Path | str, *, log_file: Path | str, **kwargs) -> TritonServer:
        """A server for one run (not started yet): free loopback ports, its log in ``log_file``.

        What ``cxr predict --serve``, ``cxr bench`` and ``cxr bench soak`` start when no
        ``--url`` is given; the log's folder is created.  ``kwargs`` are other fields
        (``target``, ``precision``, ``models``, ``env`` ...); ports and host are not theirs.
        """
        log_file = Path(log_file)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        grpc_port, http_port, metrics_port = free_ports(3)
        server = cls(model_repository=Path(model_repository), grpc_port=grpc_port, http_port=http_port,
                     metrics_port=metrics_port, log_file=log_file, **kwargs)
        log.info("embedded tritonserver for this run on %s (log %s)", server.url, log_file)
        return server

    @property
    def tls(self) -> TlsMode:
        """The gRPC endpoint's transport security."""
        if self.tls_cert is None and self.tls_key is None:
            return TlsMode.OFF
        return TlsMode.MTLS if self.tls_ca is not None else TlsMode.TLS

    @property
    def http_host(self) -> str:
        """Where HTTP (readiness, metadata) and metrics bind: never off-host next to TLS gRPC."""
        return self.host if self.tls is TlsMode.OFF or is_loopback(self.host) else "127.0.0.1"

    def exposure_warnings(self) -> list[str]:
        """What an operator must hear about this configuration's network exposure."""
        if is_loopback(self.host):
            return []
        if self.tls is TlsMode.OFF:
            return [f"gRPC, HTTP and metrics bind {self.host} without TLS: anyone who can reach this host can send "
                    "studies and read results in clear text; use --tls-cert/--tls-key (and --tls-ca for mutual TLS) "
                    "or keep the default loopback bind behind a TLS proxy"]
        kind = "mutual TLS" if self.tls is TlsMode.MTLS else "TLS (no client certificates)"
        return [f"gRPC binds {self.host} with {kind}; "
                f"HTTP and metrics stay on {self.http_host} (Triton's HTTP has no TLS: put a proxy in front if needed)"]

    def tls_flags(self) -> list[str]:
        """tritonserver 2.51 flags for the gRPC TLS settings; UsageError names a bad file."""
        if self.tls is TlsMode.OFF:
            if self.tls_ca is not None:
                raise UsageError("--tls-ca (client CA for mutual TLS) needs --tls-cert and --tls-key as well")
            return []
        if self.tls_cert is None or self.tls_key is None:
            missing = "--tls-key" if self.tls_key is None else "--tls-cert"
            raise UsageError(f"gRPC TLS needs both --tls-cert and --tls-key; {missing} is missing")
        cert = check_pem(self.tls_cert, "server certificate", "--tls-cert")
        key = check_pem(self.tls_key, "server private key", "--tls-key")
        flags = ["--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"]
        if self.tls_ca is not None:
            flags += ["--grpc-use-ssl-mutual=true",
                      f"--grpc-root-cert={check_pem(self.tls_ca, 'client CA certificate', '--tls-ca')}"]
        return flags

    def command(self, install: TritonInstall) -> list[str]:
        cmd = [
            str(install.binary), f"--model-repository={Path(self.model_repository).resolve()}",
            f"--backend-directory={install.backend_dir}", f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}",
            f"--metrics-port={self.metrics_port}", f"--grpc-address={self.host}", f"--http-address={self.http_host}",
            f"--metrics-address={self.http_host}", *self.tls_flags(), f"--log-verbose={int(self.log_verbose)}",
            "--allow-sagemaker=false", "--allow-vertex-ai=false", "--strict-readiness=true", "--exit-timeout-secs=10",
            "--model-control-mode=explicit",
        ]
        if self.target.config_name is not None:
            cmd.append(f"--model-config-name={self.target.config_name}")
        cmd += [f"--load-model={m}" for m in self.model_names]
        return cmd

    @property
    def model_names(self) -> tuple[str, ...]:
        """What the server loads: ``models``, or cxr_detector (the ensemble pulls in its three
        steps) and cxr_explain when the repository has it (one exported before it existed does
        not); an idle cxr_explain costs a Python stub (~75 MB) until someone asks for a map.  A
        Mask R-CNN's repository adds cxr_segment (its segment_postprocess step comes with it)."""
        if self.models:
            return tuple(self.models)
        repo = Path(self.model_repository)
        optional = tuple(m for m in (EXPLAIN, SEGMENT) if (repo / m / "config.pbtxt").is_file())
        return (ENSEMBLE, *optional)

    def start(self, *, timeout: float = 120.0) -> TritonServer:
        repo = Path(self.model_repository)
        if not (repo / ENSEMBLE / "config.pbtxt").is_file():
            raise UsageError(f"{repo} is not a cxr model repository (no {ENSEMBLE}/config.pbtxt)")
        if self.target is ServeTarget.CPU:
            self.choice = self.choose_path()
            log.info("detector path %s: %s", self.choice.path.name, self.choice.reason)
        install = prepare_backends()
        if self.target is not ServeTarget.CPU:
            backend = self.target.triton_backend
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
        if self.choice is not None:
            env[PRECISION_ENV], env[RUNTIME_ENV] = self.choice.path.precision, self.choice.path.runtime
        env.update(self.env)
        for warning in self.exposure_warnings():
            log.warning(warning)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        log.info("starting %s", " ".join(self.command(install)))
        try:
            self.process = subprocess.Popen(self.command(install), env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child has its own copy
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def choose_path(self) -> Choice:
        """The cpu detector's path: the pinned one (UsageError when it cannot run here) or, for ``auto``,
        :func:`cxr.serving.paths.choose` on this CPU (the passed paths are timed now if the record is from another)."""
        folder = Path(self.model_repository) / Step.DETECTOR / "1"
        if not (folder / FALLBACK.file).is_file():
            raise UsageError(f"{folder} has no exported model: "
                             f"run `cxr export onnx --checkpoint CKPT --repository {self.model_repository}`")
        isa = isa_line(cpu_info())
        if self.path == AUTO:
            inputs: list = []  # made on the first re-timing only, shared by the others

            def retime(path) -> float:
                inputs[:] = inputs or random_inputs(folder)
                return time_path(path.detector(folder), inputs)

            return choose(folder, isa, retime=retime)
        pinned = path_named(self.path)
        why = pinned.available(folder, isa)
        if why is not None:
            raise UsageError(f"detector path {pinned.name} cannot run here: {why}")
        return Choice(pinned, "pinned (--path)" if self.precision is None else f"pinned (--precision {self.precision})")

    @property
    def url(self) -> str:
        return host_port(self.host, self.grpc_port)

    def ready(self) -> bool:
        try:
            # HTTP stays plain (and on loopback when gRPC has TLS): see the module doc.
            with urllib.request.urlopen(f"http://{host_port(self.http_host, self.http_port)}/v2/health/ready", timeout=2) as r:
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

    def kill(self) -> None:
        """SIGKILL the server and its Python backend stubs at once, with no draining: a crash.

        For fault drills.  A killed server cannot remove the shared-memory regions its
        Python models used, so this removes the ones it had mapped (a restart makes new
        ones; without this each kill leaves a few MiB in /dev/shm).
        """
        if self.process is None or self.process.poll() is not None:
            return
        regions = self._mapped_shm_regions(self.process.pid)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        for path in regions:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    @staticmethod
    def _mapped_shm_regions(pid: int) -> set[Path]:
        """The Python backend's /dev/shm regions that process ``pid`` maps (Linux; else none)."""
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return set()
        return {Path(line.split(maxsplit=5)[5]) for line in maps.splitlines()
                if len(line.split(maxsplit=5)) == 6 and "/dev/shm/triton_python_backend_shm_region_" in line}

    def reload(self, model: str = "detector", *, timeout: float = 300.0) -> None:
        """Load ``model`` again from the repository while the server keeps serving.

        Explicit model control (POST /v2/repository/models/<model>/load).  Triton 2.51
        loads the repository's current version(s) next to the serving ones and swaps
        once they are ready; requests meanwhile go to the old instance, a load that
        fails leaves the old version serving, and ensembles using ``model`` follow it.
        ``model`` may be the step whose files changed (``detector`` after a new
        ``detector/<N>/model.onnx``) or the ensemble ``cxr_detector``, which reloads
        its changed steps too.  With no file changed since the last load it is a no-op.
        Raises UsageError with Triton's reason when the load fails.
        """
        import json
        import urllib.parse

        where = host_port(self.http_host, self.http_port)
        url = f"http://{where}/v2/repository/models/{urllib.parse.quote(model, safe='')}/load"
        request = urllib.request.Request(url, data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                return
        except urllib.error.HTTPError as exc:
            body = exc.read().decode("utf-8", "replace")
            try:
                reason = str(json.loads(body)["error"])
            except (ValueError, KeyError, TypeError):
                reason = body or str(exc.reason)
            first = reason.strip().splitlines()[0] if reason.strip() else f"HTTP {exc.code}"
            raise UsageError(f"reloading model {model!r} failed (a version already serving goes on serving): {first}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise UsageError(f"cannot reach tritonserver at {where} to reload {model!r}: {exc}") from exc

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
