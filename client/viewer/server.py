"""One Orthanc that serves the prepared OHIF build and its DICOMweb on one loopback origin.

Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``; ServeFolders ships with ``orthanc``) gets
a configuration of its own in a run folder: storage and index there, DICOMweb at
``/dicom-web/``, OHIF at ``/ohif/`` through ServeFolders, no DICOM port, no authentication,
``RemoteAccessAllowed: false``.  Orthanc 1.10 cannot bind one address, so by default it runs
in a private network namespace reached through :mod:`~cxr.client.viewer.relay` on
``127.0.0.1:port`` of this machine only; ``isolate=False`` runs it directly, listening on
every interface (it answers remote clients 403, but the port is open): for hosts where no
namespace can be made, behind a firewall.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cxr.client.viewer.ohif import BASE
from cxr.errors import ExplainedError, UsageError

PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGINS / "libOrthancDicomWeb.so"
SERVE_FOLDERS_PLUGIN = PLUGINS / "libServeFolders.so"
INSTALL = "apt-get install -y orthanc orthanc-dicomweb"
INSIDE_PORT = 8042  # Orthanc's HTTP port inside the private namespace: nothing else lives there
# ServeFolders takes a file's MIME type from what follows the last dot of its path; "." maps
# names without one (the OHIF route files), the others are types Orthanc 1.10 does not know.
MIME_TYPES = {".": "text/html", ".wasm": "application/wasm", ".woff2": "font/woff2", ".jsonc": "application/json",
              ".ico": "image/x-icon", ".webapp": "application/manifest+json", ".mjs": "application/javascript"}


class ViewerError(ExplainedError):
    """The viewer's Orthanc did not start or refused a file (not something the user passed wrong)."""


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None)
    missing = [str(p) for p in (DICOMWEB_PLUGIN, SERVE_FOLDERS_PLUGIN) if not p.is_file()]
    if found is None or missing:
        raise UsageError(f"the viewer needs Orthanc with its DICOMweb and ServeFolders plugins "
                         f"(missing: {', '.join(([] if found else ['Orthanc']) + missing)}): {INSTALL}")
    return found


def orthanc_config(root: Path, *, http_port: int, served: Path) -> dict:
    """The viewer's Orthanc configuration: everything in ``root``, OHIF from ``served``."""
    return {
        "Name": "cxr-viewer", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
        "HttpServerEnabled": True, "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": False,  # results come in over REST; no DICOM port to expose
        "Plugins": [str(DICOMWEB_PLUGIN), str(SERVE_FOLDERS_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "ServeFolders": {"Folders": {BASE: str(served)}, "AllowCache": True, "GenerateETag": True, "Extensions": MIME_TYPES},
        "StableAge": 1, "SaveJobs": False,
    }


def _dot_free_link(target: Path) -> Path:
    """A path to ``target`` with no dot in it: ServeFolders reads a MIME type from the last dot of the
    whole path, so ``~/.cache/…/viewer`` would not be served as HTML."""
    for parent in (None, "/tmp", "/dev/shm"):
        folder = Path(tempfile.mkdtemp(prefix="cxr_ohif_", dir=parent))
        if "." not in str(folder):
            link = folder / "ohif"
            link.symlink_to(target, target_is_directory=True)
            return link
        folder.rmdir()
    raise UsageError(f"no temporary folder without a dot in its path ({tempfile.gettempdir()}): set TMPDIR to one")


@dataclass
class ViewerServer:
    """Orthanc + OHIF on ``http://127.0.0.1:port`` (see the module docstring); a context manager."""

    ohif: Path  # the prepared dist folder (cxr.client.viewer.ohif.prepared())
    port: int = 8042
    isolate: bool = True
    root: Path | None = None  # run folder; a temporary one (deleted at stop) if None
    process: subprocess.Popen | None = field(default=None, init=False)
    _temporary: list[Path] = field(default_factory=list, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def viewer_url(self, study_instance_uid: str) -> str:
        return f"{self.url}{BASE}/viewer?StudyInstanceUIDs={study_instance_uid}"

    @property
    def study_list_url(self) -> str:
        return f"{self.url}{BASE}/index.html"

    def start(self, timeout: float = 60.0) -> ViewerServer:
        orthanc = orthanc_binary()
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="cxr-viewer-"))
            self._temporary.append(self.root)
        served = _dot_free_link(self.ohif)
        self._temporary.append(served.parent)
        inner = INSIDE_PORT if self.isolate else self.port
        config = self.root / "orthanc.json"
        config.write_text(json.dumps(orthanc_config(self.root, http_port=inner, served=served), indent=1))
        log = open(self.root / "orthanc.log", "ab")
        try:
            self.process = self._launch(orthanc, config, inner, log)
        except BaseException:
            self.stop()  # the run folder and the served link go with it
            raise
        finally:
            log.close()
        self._wait_ready(timeout)
        return self

    def _launch(self, orthanc: str, config: Path, inner: int, log) -> subprocess.Popen:
        if not self.isolate:
            return subprocess.Popen([orthanc, str(config)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        listener = socket.socket()
        # A restart finds the last run's connections in TIME_WAIT on this port: reuse it, as servers do.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.port))
        except OSError as exc:
            listener.close()
            raise UsageError(f"127.0.0.1:{self.port} is taken ({exc.strerror}): pass another --port") from exc
        listener.listen(64)
        unshare = ["unshare", "--net"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
        relay = [sys.executable, "-m", "cxr.client.viewer.relay", "--listen-fd", str(listener.fileno()),
                 "--port", str(inner), "--", orthanc, str(config)]
        try:
            # stdin stays open and unwritten: the relay stops Orthanc when this process goes
            return subprocess.Popen(unshare + relay, pass_fds=(listener.fileno(),), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.PIPE)
        except FileNotFoundError as exc:
            raise UsageError("`unshare` (util-linux) is not installed: install it, or pass --no-isolation") from exc
        finally:
            listener.close()  # the relay holds its copy

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._fail(f"exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self._fail(f"did not answer on {self.url} within {timeout:.0f} s")

    def _fail(self, what: str) -> None:
        tail = (self.root / "orthanc.log").read_text(errors="replace").strip().splitlines()[-6:]
        self.stop()
        hint = ""
        if self.isolate and any("unshare" in line for line in tail):
            hint = ("; no private network namespace can be made here (run as root, or allow unprivileged user "
                    "namespaces: sysctl kernel.unprivileged_userns_clone=1), or pass --no-isolation and firewall the port")
        raise ViewerError(f"the viewer's Orthanc {what}: {' | '.join(tail)}{hint}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.process is not None and self.process.stdin:
            self.process.stdin.close()
        for folder in self._temporary:
            shutil.rmtree(folder, ignore_errors=True)
        self._temporary.clear()

    def __enter__(self) -> ViewerServer:
        running = self.process is not None and self.process.poll() is None
        return self if running else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def store(self, path: Path) -> dict:
        """``POST /instances`` one DICOM file; Orthanc's answer (``ID``, ``ParentStudy``, ``Status``)."""
        request = urllib.request.Request(f"{self.url}/instances", data=Path(path).read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise ViewerError(f"Orthanc refused {path} (HTTP {exc.code}): {detail}") from exc

