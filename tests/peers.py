"""Real DICOM peers for the tests, started by the tests on loopback ports and stopped by them.

- :class:`Orthanc` — a real PACS (Debian ``orthanc`` + ``orthanc-dicomweb``): its JSON
  config is written per test (ports, ``DicomModalities``, storage in the test's folder);
  REST upload, routing jobs (``POST /modalities/{id}/store``), QIDO-RS and STOW-RS.
- :class:`StoreSCP`, :func:`storescu`, :func:`echoscu` — dcmtk's network tools.
- :func:`dciodvfy` — dicom3tools' independent IOD validator.
- :func:`make_film` — a synthetic film re-encoded in a transfer syntax with dcmtk's
  ``dcmconv``/``dcmcrle``/``dcmcjpeg``/``dcmcjpls``, GDCM's ``gdcmconv`` or OpenJPH's
  ``ojph_compress`` (made in the test, never committed).

A test whose peer is missing skips with the install command as its reason; under
``CI=true`` it fails instead, so CI can never go green without the real peers.
Imported as ``peers`` (pytest puts ``tests/`` on ``sys.path`` for its conftest).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pydicom
import pytest

from cxr.server.net import stable_port

PACKAGES = {"Orthanc": "orthanc orthanc-dicomweb", "storescp": "dcmtk", "storescu": "dcmtk", "echoscu": "dcmtk",
            "dcmconv": "dcmtk", "dcmcjpeg": "dcmtk", "dcmcjpls": "dcmtk", "dcmcrle": "dcmtk",
            "dciodvfy": "dicom3tools", "ojph_compress": "openjph-tools", "gdcmconv": "libgdcm-tools"}
INSTALL = "apt-get install -y " + " ".join(dict.fromkeys(" ".join(PACKAGES.values()).split()))
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def need(*tools: str) -> None:
    """Skip (or, under CI=true, fail) unless every tool is installed."""
    missing = [t for t in tools if shutil.which(t) is None]
    if "Orthanc" in tools and not DICOMWEB_PLUGIN.is_file():
        missing.append(str(DICOMWEB_PLUGIN))
    if not missing:
        return
    packages = " ".join(dict.fromkeys(PACKAGES.get(t, "orthanc-dicomweb") for t in missing))
    reason = f"needs {', '.join(missing)}: apt-get install -y {packages}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (under CI=true a real-peer test must not skip; .ci/run installs them)", pytrace=False)
    pytest.skip(reason)


def wait_for(predicate, timeout: float, *, every: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


_STARTED: list[subprocess.Popen] = []  # every peer process, so none outlives the test run


@atexit.register
def _stop_all() -> None:
    for process in _STARTED:
        if process.poll() is None:
            process.kill()


def _stop(process: subprocess.Popen | None, timeout: float = 20.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


# ---------------------------------------------------------------------------- Orthanc


class Orthanc:
    """An Orthanc PACS in ``root`` (config, storage, index, log), on fixed free ports so it can restart."""

    def __init__(self, root: Path, *, modalities: dict[str, tuple[str, str, int]] | None = None,
                 aet: str = "ORTHANC", lua: str | None = None, overwrite: bool = False,
                 users: dict[str, str] | None = None) -> None:
        need("Orthanc")
        self.root, self.aet = Path(root), aet
        self.auth = next(iter(users.items())) if users else None  # what the test itself logs in with
        self.http_port, self.dicom_port = stable_port(), stable_port()
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "cxr-test", "StorageDirectory": str(self.root / "storage"), "IndexDirectory": str(self.root / "index"),
            "HttpServerEnabled": True, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users), "RegisteredUsers": dict(users or {}), "DicomServerEnabled": True, "DicomAet": aet, "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True, "DicomScuTimeout": 30, "OverwriteInstances": overwrite,
            "DicomModalities": {name: {"AET": a, "Host": h, "Port": p} for name, (a, h, p) in (modalities or {}).items()},
            # Only the DICOMweb plugin: no GDCM plugin, so Orthanc cannot transcode JPEG 2000 (as in the field).
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "LuaScripts": [], "StableAge": 1, "SaveJobs": False, "ConcurrentJobs": 1,
        }
        if lua is not None:
            (self.root / "route.lua").write_text(lua)
            config["LuaScripts"] = [str(self.root / "route.lua")]
        self.config_path = self.root / "orthanc.json"
        self.config_path.write_text(json.dumps(config, indent=1))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def start(self, timeout: float = 30.0) -> Orthanc:
        import requests

        log = open(self.root / "orthanc.log", "ab")
        try:
            self.process = subprocess.Popen(["Orthanc", "--verbose", str(self.config_path)], stdout=log,
                                            stderr=subprocess.STDOUT)
            _STARTED.append(self.process)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.root / 'orthanc.log'}")
            try:
                if requests.get(f"{self.url}/system", timeout=2, auth=self.auth).ok:
                    wait_port(self.dicom_port)
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"Orthanc not ready after {timeout:.0f} s; see {self.root / 'orthanc.log'}")

    def stop(self) -> None:
        _stop(self.process)  # Orthanc takes a few seconds to close its DICOM port

    def __enter__(self) -> Orthanc:
        running = self.process is not None and self.process.poll() is None
        return self if running else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def upload(self, data: bytes) -> str:
        """``POST /instances``: the Orthanc ID of the stored instance."""
        import requests

        r = requests.post(f"{self.url}/instances", data=data, timeout=60, auth=self.auth)
        r.raise_for_status()
        return r.json()["ID"]

    def route(self, modality: str, ids: list[str]) -> tuple[int, dict]:
        """A real routing job, synchronous: ``POST /modalities/{modality}/store``; (HTTP status, JSON)."""
        import requests

        r = requests.post(f"{self.url}/modalities/{modality}/store", json={"Resources": ids, "Synchronous": True},
                          timeout=300, auth=self.auth)
        return r.status_code, r.json()

    def qido_instances(self, study_uid: str) -> list[dict]:
        """QIDO-RS: every instance of a study, as DICOM JSON objects."""
        import requests

        r = requests.get(f"{self.dicomweb}/studies/{study_uid}/instances", timeout=30, auth=self.auth,
                         headers={"Accept": "application/dicom+json"})
        if r.status_code == 204:
            return []
        r.raise_for_status()
        return r.json()

    def instance(self, sop_uid: str) -> pydicom.Dataset:
        """The stored file of the instance ``sop_uid`` (found with /tools/find)."""
        import io

        import requests

        r = requests.post(f"{self.url}/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}},
                          timeout=30, auth=self.auth)
        r.raise_for_status()
        (orthanc_id,) = r.json()
        file = requests.get(f"{self.url}/instances/{orthanc_id}/file", timeout=30, auth=self.auth)
        return pydicom.dcmread(io.BytesIO(file.content))


def qido_values(instance: dict, tag: str) -> list:
    return instance.get(tag, {}).get("Value", [])


# ------------------------------------------------------------------------------ dcmtk

DCMTK_SYNTAXES = ("LittleEndianExplicit", "LittleEndianImplicit", "BigEndianExplicit", "DeflatedLittleEndianExplicit",
                  "RLELossless", "JPEGBaseline", "JPEGExtended:Process2+4", "JPEGLossless:Non-hierarchical:Process14",
                  "JPEGLossless:Non-hierarchical-1stOrderPrediction", "JPEGLSLossless", "JPEGLSLossy",
                  "JPEG2000LosslessOnly", "JPEG2000")
FILM_CLASSES = ("ComputedRadiographyImageStorage", "DigitalXRayImageStorageForPresentation",
                "DigitalXRayImageStorageForProcessing", "SecondaryCaptureImageStorage")
RESULT_CLASSES = ("Comprehensive3DSRStorage", "GrayscaleSoftcopyPresentationStateStorage")


def dcmtk_profile(path: Path, classes, syntaxes=DCMTK_SYNTAXES, *, requestor: bool = False) -> Path:
    """A dcmtk association profile named ``Test`` (storescp/storescu ``-xf PATH Test``).

    Acceptor: one context per class listing every syntax (dcmtk wants each abstract
    syntax once).  Requestor: one context per class and syntax, so the acceptor can take
    the film's own syntax; with one context listing all of them it would pick the first
    it knows and the SCU would have to transcode.
    """
    groups = {"Any": list(syntaxes)} if not requestor else {f"TS{i}": [s] for i, s in enumerate(syntaxes, 1)}
    lines = ["[[TransferSyntaxes]]"]
    for name, members in groups.items():
        lines += [f"[{name}]", *(f"TransferSyntax{i} = {s}" for i, s in enumerate(members, 1))]
    pairs = [(c, g) for c in classes for g in groups] + [("VerificationSOPClass", next(iter(groups)))]
    lines += ["[[PresentationContexts]]", "[Contexts]",
              *(f"PresentationContext{i} = {c}\\{g}" for i, (c, g) in enumerate(pairs, 1)),
              "[[Profiles]]", "[Test]", "PresentationContexts = Contexts"]
    path.write_text("\n".join(lines) + "\n")
    return path


class StoreSCP:
    """dcmtk's storescp receiving into ``folder`` as ``ae_title``; ``received`` reads what arrived."""

    def __init__(self, folder: Path, *, ae_title: str = "PACS", port: int | None = None,
                 classes=RESULT_CLASSES, syntaxes=DCMTK_SYNTAXES) -> None:
        need("storescp")
        self.folder, self.ae_title = Path(folder), ae_title
        self.port = port or stable_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.profile = dcmtk_profile(self.folder.parent / f"{self.folder.name}.scp.cfg", classes, syntaxes)
        self.process: subprocess.Popen | None = None

    def start(self) -> StoreSCP:
        log = open(self.folder.parent / f"{self.folder.name}.storescp.log", "ab")
        try:
            self.process = subprocess.Popen(
                ["storescp", "-aet", self.ae_title, "-od", str(self.folder), "+uf", "-fe", ".dcm",
                 "-xf", str(self.profile), "Test", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
            _STARTED.append(self.process)
        finally:
            log.close()
        wait_port(self.port)
        return self

    def stop(self) -> None:
        _stop(self.process)

    def __enter__(self) -> StoreSCP:
        running = self.process is not None and self.process.poll() is None
        return self if running else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))

    @property
    def received(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(f) for f in self.files]


_STATUS_WORDS = {"Success": 0x0000, "Refused: OutOfResources": 0xA700, "Error: CannotUnderstand": 0xC000}


def storescu(port: int, files, *, calling: str, called: str, profile: Path | None = None,
             timeout: float = 120.0) -> list[int | None] | None:
    """dcmtk's storescu sends each file as it is (its own transfer syntax); the C-STORE status of each.

    None when the association is refused; an entry is None when no response came.
    ``profile`` proposes the contexts of a :func:`dcmtk_profile` (default: every film
    class in every syntax dcmtk knows, so a compressed film goes out as stored).
    """
    need("storescu")
    files = [Path(f) for f in files]
    with tempfile.TemporaryDirectory(prefix="cxr-storescu-") as tmp:
        if profile is None:
            profile = dcmtk_profile(Path(tmp) / "storescu.cfg", FILM_CLASSES, requestor=True)
        r = subprocess.run(["storescu", "-d", "-aet", calling, "-aec", called, "-xf", str(profile), "Test",
                            "127.0.0.1", str(port), *map(str, files)], capture_output=True, text=True, timeout=timeout)
    out = r.stdout + r.stderr
    if "Association Rejected" in out or "Association Request Failed" in out:
        return None
    statuses: list[int | None] = []
    for line in out.splitlines():
        # debug output dumps each C-STORE-RSP: "DIMSE Status                  : 0x0000: Success"
        if "DIMSE Status" in line and ": 0x" in line:
            statuses.append(int(line.split(": 0x")[1][:4], 16))
    return statuses + [None] * (len(files) - len(statuses))


def echoscu(port: int, *, called: str, calling: str = "ECHOSCU") -> bool:
    need("echoscu")
    r = subprocess.run(["echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port)], capture_output=True,
                       text=True, timeout=60)
    return r.returncode == 0


# --------------------------------------------------------------------------- dciodvfy

# Warnings that stay (client/README.md, "Connect your PACS"): dciodvfy knows no local coding scheme.
ACCEPTED_WARNINGS = ("Unrecognized defined term <99CXR> for value 1 of attribute <Coding Scheme Designator>",)


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) that dciodvfy reports for the instance at ``path``."""
    need("dciodvfy")
    r = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (r.stdout + r.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def assert_valid_iod(path: Path) -> None:
    errors, warnings = dciodvfy(path)
    unexpected = [w for w in warnings if not any(a in w for a in ACCEPTED_WARNINGS)]
    assert not errors and not unexpected, f"dciodvfy on {path.name}:\n" + "\n".join(errors + unexpected)


# ------------------------------------------------------------------------ test films

# How each transfer syntax is made here from an uncompressed Explicit VR LE film.
ENCODERS = {
    "1.2.840.10008.1.2": ["dcmconv", "+ti"],
    "1.2.840.10008.1.2.1": ["dcmconv", "+te"],
    "1.2.840.10008.1.2.2": ["dcmconv", "+tb"],
    "1.2.840.10008.1.2.1.99": ["dcmconv", "+td"],
    "1.2.840.10008.1.2.5": ["dcmcrle"],
    "1.2.840.10008.1.2.4.50": ["dcmcjpeg", "+eb"],  # 8-bit films only
    "1.2.840.10008.1.2.4.51": ["dcmcjpeg", "+ee"],
    "1.2.840.10008.1.2.4.57": ["dcmcjpeg", "+el", "+sv", "{sv}"],
    "1.2.840.10008.1.2.4.70": ["dcmcjpeg", "+e1"],
    "1.2.840.10008.1.2.4.80": ["dcmcjpls", "+el"],
    "1.2.840.10008.1.2.4.81": ["dcmcjpls", "+en", "+md", "2"],
    "1.2.840.10008.1.2.4.90": ["gdcmconv", "--j2k"],
    "1.2.840.10008.1.2.4.91": ["gdcmconv", "--j2k", "--lossy", "-q", "80"],  # PSNR 80 dB
    "1.2.840.10008.1.2.4.201": ["ojph_compress", "-reversible", "true"],
    "1.2.840.10008.1.2.4.202": ["ojph_compress", "-reversible", "true", "-prog_order", "RPCL"],
    "1.2.840.10008.1.2.4.203": ["ojph_compress", "-reversible", "false", "-qstep", "0.001"],
}


def make_film(source: Path, syntax: str, out: Path, *, sv: int = 1, **uids: str) -> Path:
    """``source`` (uncompressed) re-encoded as ``syntax`` into ``out``.

    ``uids`` (SOPInstanceUID=..., StudyInstanceUID=...) are set on the result: dcmtk's
    lossless modes keep the source's UIDs and its lossy modes make a new SOPInstanceUID.
    """
    command = [part.format(sv=sv) for part in ENCODERS[syntax]]
    need(command[0])
    if command[0] == "ojph_compress":
        _htj2k(source, syntax, out, command)
    else:
        r = subprocess.run([*command, str(source), str(out)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{' '.join(command)} failed: {(r.stderr or r.stdout).strip()[:500]}")
    if uids:  # pydicom rewrites the file around its encapsulated pixel data, which stays as encoded
        ds = pydicom.dcmread(out)
        for keyword, value in uids.items():
            setattr(ds, keyword, value)
        if "SOPInstanceUID" in uids:
            ds.file_meta.MediaStorageSOPInstanceUID = uids["SOPInstanceUID"]
        ds.save_as(out, enforce_file_format=True)
    made = pydicom.dcmread(out, stop_before_pixels=True)
    assert made.file_meta.TransferSyntaxUID == syntax, f"{command} wrote {made.file_meta.TransferSyntaxUID}"
    return out


def base_films(synth_data: Path, out: Path) -> dict[str, Path]:
    """Uncompressed films to encode: a 12-bit CR MONOCHROME1 and DX MONOCHROME2 of the synthetic
    set, and an 8-bit copy of the CR (JPEG Baseline is 8-bit only)."""
    import numpy as np

    def first(modality: str, photometric: str) -> Path:
        for f in sorted((synth_data / "dicom").glob("*.dcm")):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            if ds.Modality == modality and ds.PhotometricInterpretation == photometric:
                return f
        raise AssertionError(f"the synthetic set has no {modality} {photometric} film")

    cr, dx = first("CR", "MONOCHROME1"), first("DX", "MONOCHROME2")
    ds = pydicom.dcmread(cr)
    shift = int(ds.BitsStored) - 8
    ds.PixelData = (ds.pixel_array >> shift).astype(np.uint8).tobytes()
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for keyword in ("WindowCenter", "WindowWidth"):  # the window follows the values down to 8 bits
        if keyword in ds:
            value = ds[keyword].value
            first_value = value[0] if isinstance(value, pydicom.multival.MultiValue) else value
            setattr(ds, keyword, float(first_value) / 2**shift)
    out.mkdir(parents=True, exist_ok=True)
    ds.save_as(out / "cr8.dcm", enforce_file_format=True)
    return {"cr12": cr, "dx12": dx, "cr8": out / "cr8.dcm"}



def derived_object_films(synth_data: Path, out: Path) -> dict[str, pydicom.Dataset]:
    """The films a derived object (SEG, Parametric Map, capture) is tested on.  CR: the synthetic
    12-bit MONOCHROME1 CR (no Frame of Reference).  DX: the synthetic DX cropped to 256 x 200 with a
    Frame of Reference module (a DX may have one, "U").  CR16: pydicom's real CR (16 x 16, CSPINE)."""
    import numpy as np

    paths = base_films(synth_data, out)
    cr, dx = pydicom.dcmread(paths["cr12"]), pydicom.dcmread(paths["dx12"])
    assert "FrameOfReferenceUID" not in cr and "FrameOfReferenceUID" not in dx
    dx.PixelData = np.ascontiguousarray(dx.pixel_array[:, :200]).tobytes()
    dx.Columns = 200
    dx.FrameOfReferenceUID, dx.PositionReferenceIndicator = pydicom.uid.generate_uid(), ""
    real = sorted((Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "77654033").glob("CR*/*"))
    return {"CR": cr, "DX": dx, "CR16": pydicom.dcmread(real[0])}

def film_source(films: dict[str, Path], syntax: str, which: str = "cr12") -> Path:
    """The base film for ``syntax``: the 8-bit copy for JPEG Baseline, else ``which``."""
    return films["cr8"] if syntax == "1.2.840.10008.1.2.4.50" else films[which]


def _htj2k(source: Path, syntax: str, out: Path, command: list[str]) -> Path:
    """OpenJPH encodes a PGM of the stored values; the codestream is encapsulated as the frame."""
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(source)
    stored = ds.pixel_array
    top = 2 ** int(ds.BitsStored) - 1
    pgm, j2c = out.with_suffix(".pgm"), out.with_suffix(".j2c")
    body = stored.astype(">u2").tobytes() if top > 255 else stored.astype("u1").tobytes()
    pgm.write_bytes(f"P5\n{stored.shape[1]} {stored.shape[0]}\n{top}\n".encode() + body)
    r = subprocess.run([command[0], "-i", str(pgm), "-o", str(j2c), *command[1:]], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0 or not j2c.is_file():
        raise RuntimeError(f"ojph_compress failed: {(r.stderr or r.stdout).strip()[:500]}")
    ds.PixelData = encapsulate([j2c.read_bytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax.endswith(".203"):
        ds.LossyImageCompression = "01"
    ds.save_as(out, enforce_file_format=True)
    pgm.unlink()
    j2c.unlink()
    return out


# Independent decoders: a lossy film decoded by cxr must equal what these give.
REFERENCE_DECODERS = {
    "1.2.840.10008.1.2.4.50": ["dcmdjpeg"], "1.2.840.10008.1.2.4.51": ["dcmdjpeg"],
    "1.2.840.10008.1.2.4.81": ["dcmdjpls"], "1.2.840.10008.1.2.4.91": ["gdcmconv", "--raw"],
    "1.2.840.10008.1.2.4.203": ["ojph_expand"],
}


def reference_decode(film: Path) -> "np.ndarray":
    """The stored values of ``film`` as dcmtk, GDCM or OpenJPH decode them (not pydicom's plugins)."""
    import numpy as np
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(film)
    command = REFERENCE_DECODERS[str(ds.file_meta.TransferSyntaxUID)]
    need(command[0])
    with tempfile.TemporaryDirectory(prefix="cxr-refdec-") as tmp:
        if command[0] == "ojph_expand":
            j2c, pgm = Path(tmp) / "f.j2c", Path(tmp) / "f.pgm"
            j2c.write_bytes(next(generate_frames(ds.PixelData, number_of_frames=1)))
            subprocess.run([*command, "-i", str(j2c), "-o", str(pgm)], check=True, capture_output=True, timeout=60)
            header, body = pgm.read_bytes().split(b"\n", 3)[:3], pgm.read_bytes().split(b"\n", 3)[3]
            width, height = map(int, header[1].split())
            dtype = ">u2" if int(header[2]) > 255 else "u1"
            return np.frombuffer(body, dtype=dtype).reshape(height, width).astype(np.int64)
        out = Path(tmp) / "decoded.dcm"
        subprocess.run([*command, str(film), str(out)], check=True, capture_output=True, timeout=60)
        return pydicom.dcmread(out).pixel_array.astype(np.int64)
