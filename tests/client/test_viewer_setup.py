"""``cxr viewer``: the pinned OHIF build (fetch, verify, prepare) and the viewer's Orthanc (loopback only).

The real build comes from the cache that `make test`'s set-up fills (`cxr viewer fetch`):
without it these tests skip naming that command, and fail under CI=true.  Nothing here
reaches the network: npm is replaced where a test needs its absence or its failure.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from cxr.cli import main
from cxr.client.viewer import ViewerServer, ohif
from cxr.client.viewer.server import ViewerError
from cxr.errors import InvalidFileError, MissingFileError, UsageError


def _cached_tarball() -> Path:
    from peers import need

    need("Orthanc")
    tarball = ohif.cache_dir() / ohif.TARBALL
    try:
        ohif.prepared()
    except MissingFileError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (under CI=true this must not skip; `make test` runs `cxr viewer fetch`)", pytrace=False)
        pytest.skip(str(exc))
    return tarball


def _fake_dist(folder: Path) -> Path:
    """The parts of OHIF's dist/ that assume it is served at /, in miniature."""
    folder.mkdir(parents=True)
    (folder / "index.html").write_text('<script>window.PUBLIC_URL="/"</script><link href="/app.bundle.css" rel="stylesheet">'
                                       '<script src="/app-config.js"></script><script defer src="/app.bundle.1.js"></script>')
    (folder / "app.bundle.1.js").write_text('__webpack_require__.p = "/";\nimport(\'/dicom-microscopy-viewer/x.js\')')
    (folder / "app.bundle.css").write_text("@font-face{src:url(/a.woff2)}")
    (folder / "manifest.json").write_text('{"icons": [{"src": "/assets/icon.png"}]}')
    (folder / "app-config.js").write_text("window.config = {routerBasename: null};")
    return folder


def test_the_build_is_rewritten_for_its_sub_path(tmp_path):
    dist = _fake_dist(tmp_path / "dist")
    ohif.rewrite_for_base(dist)
    index = (dist / "index.html").read_text()
    assert 'window.PUBLIC_URL="/ohif/"' in index
    assert 'href="/ohif/app.bundle.css"' in index and 'src="/ohif/app.bundle.1.js"' in index
    assert (dist / "viewer").read_text() == index  # the route a study URL opens: ServeFolders has no fallback
    assert (dist / "app.bundle.1.js").read_text() == ('__webpack_require__.p = "/ohif/";\n'
                                                      "import('/ohif/dicom-microscopy-viewer/x.js')")
    assert (dist / "app.bundle.css").read_text() == "@font-face{src:url(/ohif/a.woff2)}"
    assert json.loads((dist / "manifest.json").read_text())["icons"][0]["src"] == "/ohif/assets/icon.png"
    config = (dist / "app-config.js").read_text()
    for expected in ("routerBasename: '/ohif'", "qidoRoot: '/dicom-web'", "wadoRoot: '/dicom-web'",
                     "'ohif.tours': { $set: [] }", "history.replaceState(null, '', '/ohif/'"):
        assert expected in config


def test_another_build_is_refused_rather_than_half_rewritten(tmp_path):
    dist = _fake_dist(tmp_path / "dist")
    (dist / "app.bundle.1.js").write_text("__webpack_require__.p = self.location;")
    with pytest.raises(InvalidFileError, match=r'no __webpack_require__.p = "/" in \*.js'):
        ohif.rewrite_for_base(dist)


def test_a_tarball_that_is_not_the_pinned_one_is_refused(tmp_path):
    wrong = tmp_path / ohif.TARBALL
    wrong.write_bytes(b"\0" * 1000)
    with pytest.raises(InvalidFileError, match="1,000 bytes.*expected 49,906,651 bytes.*dist.integrity"):
        ohif.verify_tarball(wrong, fix="fetch it again")
    with pytest.raises(InvalidFileError, match="it was not put into the cache"):
        ohif.fetch(directory=tmp_path / "cache", source=wrong)
    assert not (tmp_path / "cache" / ohif.TARBALL).exists()


def test_without_npm_the_error_says_what_to_install_and_the_offline_way(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UsageError, match=r"apt-get install npm.*--from FILE"):
        ohif.fetch(directory=tmp_path)


def test_an_unprepared_cache_names_the_set_up_command(tmp_path, capsys):
    with pytest.raises(MissingFileError, match="run `cxr viewer fetch` once at set-up"):
        ohif.prepared(tmp_path)
    assert main(["viewer", "serve", str(tmp_path), "--cache-dir", str(tmp_path)]) == 2
    assert "cxr viewer fetch" in capsys.readouterr().err


def test_a_verified_cache_is_kept_and_nothing_is_fetched(monkeypatch):
    _cached_tarball()
    monkeypatch.setattr(ohif, "_npm_pack", lambda cache: pytest.fail("fetched although the cache is good"))
    assert ohif.fetch() == ohif.prepared()


def test_the_pinned_tarball_is_prepared_from_a_local_file(tmp_path):
    """`cxr viewer fetch --from TGZ`, the way onto a machine without the registry: the real build, prepared."""
    tarball = _cached_tarball()
    folder = ohif.fetch(directory=tmp_path, source=tarball)
    assert folder == ohif.prepared(tmp_path)
    assert (folder / "viewer").read_text() == (folder / "index.html").read_text()
    chunks = [p for p in folder.glob("*.js") if '__webpack_require__.p = "/ohif/";' in p.read_text(errors="replace")]
    assert len(chunks) >= 8 and not any('__webpack_require__.p = "/";' in p.read_text(errors="replace")
                                        for p in folder.glob("*.js"))


@pytest.fixture(scope="module")
def server():
    _cached_tarball()
    from cxr.server.net import stable_port

    try:
        running = ViewerServer(ohif.prepared(), port=stable_port()).start()
    except ViewerError as exc:  # a host where no private network namespace can be made
        if os.environ.get("CI") == "true" or "namespace" not in str(exc):
            raise
        pytest.skip(str(exc))
    with running:
        yield running


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.status, answer.headers.get("Content-Type", ""), answer.read()


def test_ohif_and_dicomweb_share_one_loopback_origin(server):
    assert _get(f"{server.url}/ohif/viewer")[:2] == (200, "text/html")  # a route file: no dot in its name
    assert _get(f"{server.url}/ohif/app-config.js")[1] == "application/javascript"
    wasm = next(p.name for p in ohif.prepared().glob("*.wasm"))
    assert _get(f"{server.url}/ohif/{wasm}")[1] == "application/wasm"
    status, kind, _ = _get(f"{server.url}/dicom-web/studies")
    assert status in (200, 204)


def test_orthanc_runs_in_a_network_namespace_of_its_own(server):
    """Orthanc 1.10 listens on every interface: in its own namespace, only the relay's loopback socket reaches it."""
    relay = server.process.pid
    (orthanc,) = [int(p) for p in Path(f"/proc/{relay}/task/{relay}/children").read_text().split()]
    assert "Orthanc" in Path(f"/proc/{orthanc}/cmdline").read_text()
    ours = os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{relay}/ns/net") == os.readlink(f"/proc/{orthanc}/ns/net") != ours
    config = json.loads((server.root / "orthanc.json").read_text())
    assert (config["RemoteAccessAllowed"], config["DicomServerEnabled"]) == (False, False)


def test_without_isolation_orthanc_itself_serves_the_port():
    """--no-isolation, for hosts where no namespace can be made: Orthanc on the port, in our namespace."""
    _cached_tarball()
    from cxr.server.net import stable_port

    with ViewerServer(ohif.prepared(), port=stable_port(), isolate=False) as plain:
        assert "Orthanc" in Path(f"/proc/{plain.process.pid}/cmdline").read_text()
        assert os.readlink(f"/proc/{plain.process.pid}/ns/net") == os.readlink("/proc/self/ns/net")
        assert json.loads((plain.root / "orthanc.json").read_text())["HttpPort"] == plain.port
        assert _get(f"{plain.url}/ohif/viewer")[:2] == (200, "text/html")
    assert plain.process.poll() is not None


def test_a_file_orthanc_refuses_is_named(server, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(ViewerError, match=r"Orthanc refused .*junk\.dcm \(HTTP 400\)"):
        server.store(junk)


def test_a_taken_port_is_named_and_nothing_is_left_behind(server):
    import tempfile

    def leftovers() -> set[Path]:
        return {p for pattern in ("cxr-viewer-*", "cxr_ohif_*") for p in Path(tempfile.gettempdir()).glob(pattern)}

    before = leftovers()
    with pytest.raises(UsageError, match=f"127.0.0.1:{server.port} is taken"):
        ViewerServer(ohif.prepared(), port=server.port).start()
    assert leftovers() == before


def test_cxr_viewer_serve_stores_the_files_and_prints_the_urls(tmp_path, capsys, real_cr_files):
    _cached_tarball()
    from cxr.server.net import stable_port

    port = stable_port()
    assert main(["viewer", "serve", str(real_cr_files[0]), "--port", str(port), "--exit"]) == 0
    out = capsys.readouterr().out
    assert "1 object in 1 study: 1 CR" in out
    assert f"http://127.0.0.1:{port}/ohif/index.html" in out
    assert f"http://127.0.0.1:{port}/ohif/viewer?StudyInstanceUIDs=" in out
    assert "loopback only" in out or "--no-isolation" in out


def test_cxr_viewer_serve_without_dicom_files_says_so(tmp_path, capsys):
    _cached_tarball()
    (tmp_path / "notes.txt").write_text("not a film")
    assert main(["viewer", "serve", str(tmp_path), "--exit"]) == 2
    assert "no DICOM file" in capsys.readouterr().err
