"""`cxr pacs` against the systems hospitals run: Orthanc as the PACS, dcmtk as modality and archive.

Films in every transfer syntax are made in the test from synthetic films (tests/peers.py),
uploaded to Orthanc through its REST API and routed to the bridge with a real routing job
(``POST /modalities/cxr/store``) or its Lua auto-routing (deploy/orthanc/autoroute.lua); the
SR and GSPS come back into Orthanc, are found with QIDO-RS and pass dciodvfy.  The detector
is the session's live tritonserver.  Faults: Orthanc down while results are pending, the
bridge killed between spooling and delivery, a film the bridge must refuse.
"""

from __future__ import annotations

import io
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("tritonclient.grpc")

from pydicom.uid import generate_uid  # noqa: E402

from cxr.client.destinations import read_auth  # noqa: E402
from cxr.client.pacs import COMPREHENSIVE_3D_SR, GSPS, PacsBridge, PacsConfig  # noqa: E402
from cxr.decode.transfer_syntaxes import BY_UID, SYNTAXES  # noqa: E402
import peers  # noqa: E402  (tests/peers.py)
from cxr.server.net import stable_port  # noqa: E402
from dicomnet import referenced_uids  # noqa: E402
from peers import (  # noqa: E402
    Orthanc, StoreSCP, assert_valid_iod, base_films, dcmtk_profile, echoscu, film_source, make_film, qido_values,
    storescu, wait_port,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 90.0
SOP_CLASS, SOP_INSTANCE, REFERENCED = "00080016", "00080018", "00081199"
# Orthanc 1.10 (Debian 12) cannot C-STORE HTJ2K at all, to any peer; those films reach the
# bridge from a pynetdicom sender instead (test_htj2k_...).
HTJ2K = tuple(s.uid for s in SYNTAXES if s.uid.startswith("1.2.840.10008.1.2.4.20"))
ROUTED = [s.uid for s in SYNTAXES if s.uid not in HTJ2K]


def wait_for(predicate, timeout: float = WAIT_S) -> bool:
    return peers.wait_for(predicate, timeout)


@pytest.fixture(scope="module")
def films(synth_data, tmp_path_factory) -> dict[str, Path]:
    return base_films(synth_data, tmp_path_factory.mktemp("films"))


def fresh_film(films, syntax: str, folder: Path, which: str = "cr12") -> tuple[Path, str, str]:
    """A film in ``syntax`` with new SOP and Study UIDs: (path, SOPInstanceUID, StudyInstanceUID)."""
    sop, study = generate_uid(), generate_uid()
    path = make_film(film_source(films, syntax, which), syntax, folder / f"{sop}.dcm", sv=4,
                     SOPInstanceUID=sop, StudyInstanceUID=study)
    return path, sop, study


def results_of(orthanc: Orthanc, study: str, source_sop: str) -> list[pydicom.Dataset]:
    """The SR/GSPS Orthanc holds for ``study`` that reference ``source_sop`` (found with QIDO-RS)."""
    found = []
    for inst in orthanc.qido_instances(study):
        if qido_values(inst, SOP_CLASS)[0] in (COMPREHENSIVE_3D_SR, GSPS):
            ds = orthanc.instance(qido_values(inst, SOP_INSTANCE)[0])
            if source_sop in referenced_uids(ds):
                found.append(ds)
    return found


def check_iods(datasets, folder: Path) -> None:
    """dciodvfy on every result as the PACS stored it: 0 errors, only the warnings client/README.md lists."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, ds in enumerate(datasets):
        path = folder / f"{i}-{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert_valid_iod(path)


def bridge_config(spool: Path, port: int, forward: tuple[str, int, str], url: str, **overrides) -> PacsConfig:
    values = dict(port=port, allowed_aes=("ORTHANC", "MODALITY1"), forward=forward, spool=spool, detector_url=url,
                  gsps=True, retry_backoff_s=0.2, max_attempts_per_pass=2, pass_pause_s=0.5, timeout_s=30.0)
    values.update(overrides)
    return PacsConfig(**values)


# ------------------------------------------------------- Orthanc routes every syntax


@pytest.fixture(scope="module")
def pacs(server, tmp_path_factory):
    """Orthanc with the bridge as modality ``cxr``, the bridge forwarding results back to Orthanc."""
    root = tmp_path_factory.mktemp("pacs")
    bridge_port = stable_port()
    orthanc = Orthanc(root / "orthanc", modalities={"cxr": ("CXR", "127.0.0.1", bridge_port)}).start()
    bridge = PacsBridge(bridge_config(root / "spool", bridge_port, ("127.0.0.1", orthanc.dicom_port, "ORTHANC"),
                                      server.url)).start()
    yield orthanc, bridge
    bridge.stop()
    orthanc.stop()


@pytest.mark.parametrize("syntax", ROUTED, ids=[BY_UID[u].name for u in ROUTED])
def test_orthanc_routes_each_syntax_to_the_bridge_and_gets_sr_and_gsps_back(syntax, pacs, films, tmp_path, caplog):
    orthanc, bridge = pacs
    film, sop, study = fresh_film(films, syntax, tmp_path)
    caplog.set_level(logging.INFO, logger="cxr.pacs")
    code, job = orthanc.route("cxr", [orthanc.upload(film.read_bytes())])  # a real routing job
    assert code == 200 and job["InstancesCount"] == 1 and job["FailedInstancesCount"] == 0, job
    # Accepted at association in the syntax Orthanc stored: no transcoding on the way.
    assert any(f"in {BY_UID[syntax].name} from AE 'ORTHANC'" in r.getMessage() for r in caplog.records)
    assert wait_for(lambda: len(results_of(orthanc, study, sop)) == 2), "SR and GSPS did not arrive in Orthanc"
    results = results_of(orthanc, study, sop)
    assert sorted(ds.SOPClassUID for ds in results) == sorted([COMPREHENSIVE_3D_SR, GSPS])
    assert all(ds.StudyInstanceUID == study for ds in results)
    check_iods(results, tmp_path / "results")

    duplicates = bridge.stats["duplicates"]
    code, job = orthanc.route("cxr", [orthanc.upload(film.read_bytes())])  # the same film routed again
    assert code == 200 and wait_for(lambda: bridge.stats["duplicates"] == duplicates + 1)
    assert bridge.wait_idle(WAIT_S)
    assert len(results_of(orthanc, study, sop)) == 2, "the second routing duplicated the results"


@pytest.mark.parametrize("syntax", HTJ2K, ids=[BY_UID[u].name for u in HTJ2K])
def test_htj2k_reaches_the_bridge_from_a_dicom_sender_and_results_land_in_orthanc(syntax, pacs, films, tmp_path):
    """Orthanc 1.10 refuses to C-STORE HTJ2K; a modality that sends it (here pynetdicom) is served."""
    from pynetdicom import AE

    orthanc, bridge = pacs
    film, sop, study = fresh_film(films, syntax, tmp_path)
    code, job = orthanc.route("cxr", [orthanc.upload(film.read_bytes())])
    assert code == 500  # Orthanc's own limitation: "C-STORE ... DIMSE Failed to send message"
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(pydicom.dcmread(film, stop_before_pixels=True).SOPClassUID, [syntax])
    assoc = ae.associate("127.0.0.1", bridge.address[1], ae_title="CXR")
    assert assoc.is_established and assoc.accepted_contexts[0].transfer_syntax == [syntax]
    try:
        assert assoc.send_c_store(pydicom.dcmread(film)).Status == 0x0000
    finally:
        assoc.release()
    assert wait_for(lambda: len(results_of(orthanc, study, sop)) == 2)
    check_iods(results_of(orthanc, study, sop), tmp_path / "results")


def test_orthanc_lua_auto_routing_from_the_readme(server, films, tmp_path):
    """deploy/orthanc/autoroute.lua, as client/README.md shows it: a stored CR is sent to the bridge on its own."""
    bridge_port = stable_port()
    lua = (ROOT / "deploy" / "orthanc" / "autoroute.lua").read_text()
    with Orthanc(tmp_path / "orthanc", modalities={"cxr": ("CXR", "127.0.0.1", bridge_port)}, lua=lua) as orthanc:
        config = bridge_config(tmp_path / "spool", bridge_port, ("127.0.0.1", orthanc.dicom_port, "ORTHANC"), server.url)
        with PacsBridge(config) as bridge:
            film, sop, study = fresh_film(films, "1.2.840.10008.1.2.4.90", tmp_path)  # JPEG 2000: no transcoding
            orthanc.upload(film.read_bytes())
            assert wait_for(lambda: len(results_of(orthanc, study, sop)) == 2)
            assert bridge.wait_idle(WAIT_S) and bridge.stats["received"] == 1  # its own SR/GSPS not routed back


def test_a_film_the_bridge_must_refuse_fails_the_routing_job_and_nothing_is_spooled(pacs, films, tmp_path):
    orthanc, bridge = pacs
    mr = pydicom.dcmread(films["cr12"])
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    mr.Modality = "MR"
    mr.SOPInstanceUID = mr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    mr.save_as(buffer, enforce_file_format=True)
    before = bridge.stats
    code, job = orthanc.route("cxr", [orthanc.upload(buffer.getvalue())])
    assert code == 500 and "DIMSE status 0x0122" in job["Details"], job  # "SOP class not supported"
    assert bridge.stats["unsupported"] == before["unsupported"] + 1
    assert bridge.stats["received"] == before["received"]
    assert not any(bridge.spool.pending.iterdir())


# --------------------------------------------------------------------------- dcmtk


@pytest.mark.parametrize("syntax", ROUTED, ids=[BY_UID[u].name for u in ROUTED])
def test_dcmtk_storescu_sends_each_syntax_and_storescp_receives_the_results(syntax, server, films, tmp_path):
    with StoreSCP(tmp_path / "archive") as archive:
        config = bridge_config(tmp_path / "spool", stable_port(), ("127.0.0.1", archive.port, "PACS"), server.url)
        with PacsBridge(config) as bridge:
            assert echoscu(bridge.address[1], called="CXR", calling="MODALITY1")
            film, sop, _ = fresh_film(films, syntax, tmp_path, which="dx12")
            assert storescu(bridge.address[1], [film], calling="MODALITY1", called="CXR") == [0x0000]
            assert bridge.wait_idle(WAIT_S) and bridge.stats["delivered"] == 1, bridge.stats
        received = archive.received
    assert sorted(ds.SOPClassUID for ds in received) == sorted([COMPREHENSIVE_3D_SR, GSPS])
    assert all(sop in referenced_uids(ds) for ds in received)
    for path in archive.files:
        assert_valid_iod(path)


def test_results_go_out_in_the_syntax_the_destination_accepts(server, films, tmp_path):
    only_implicit = StoreSCP(tmp_path / "archive", syntaxes=("LittleEndianImplicit",))
    with only_implicit:
        config = bridge_config(tmp_path / "spool", stable_port(), ("127.0.0.1", only_implicit.port, "PACS"), server.url)
        with PacsBridge(config) as bridge:
            film, sop, _ = fresh_film(films, "1.2.840.10008.1.2.4.70", tmp_path)
            assert storescu(bridge.address[1], [film], calling="MODALITY1", called="CXR") == [0x0000]
            assert bridge.wait_idle(WAIT_S) and bridge.stats["delivered"] == 1
    received = only_implicit.received
    assert sorted(ds.SOPClassUID for ds in received) == sorted([COMPREHENSIVE_3D_SR, GSPS])
    assert {ds.file_meta.TransferSyntaxUID for ds in received} == {"1.2.840.10008.1.2"}


def test_a_destination_that_accepts_none_of_our_syntaxes_fails_the_study_with_the_reason(server, films, tmp_path):
    # An archive that would take SR only as JPEG Lossless: no uncompressed syntax we could send it in.
    odd = StoreSCP(tmp_path / "archive", classes=("Comprehensive3DSRStorage",),
                   syntaxes=("JPEGLossless:Non-hierarchical-1stOrderPrediction",))
    with odd:
        config = bridge_config(tmp_path / "spool", stable_port(), ("127.0.0.1", odd.port, "PACS"), server.url,
                               gsps=False)
        with PacsBridge(config) as bridge:
            film, sop, _ = fresh_film(films, "1.2.840.10008.1.2.1", tmp_path)
            assert storescu(bridge.address[1], [film], calling="MODALITY1", called="CXR") == [0x0000]
            assert bridge.wait_idle(WAIT_S) and bridge.stats["failed"] == 1 and bridge.stats["retries"] == 0
    reason = (tmp_path / "spool" / "failed" / f"{sop}.reason.txt").read_text()
    assert "accepts none of the transfer syntaxes offered for Comprehensive 3D SR Storage" in reason
    assert (tmp_path / "spool" / "failed" / f"{sop}.dcm").is_file() and odd.files == []


# -------------------------------------------------------------------------- faults


def test_orthanc_down_while_results_are_pending_delivers_each_once_after_it_restarts(server, films, tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc")  # configured, not started: the destination is down
    config = bridge_config(tmp_path / "spool", stable_port(), ("127.0.0.1", orthanc.dicom_port, "ORTHANC"), server.url)
    sent = [fresh_film(films, syntax, tmp_path) for syntax in ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90",
                                                               "1.2.840.10008.1.2.4.80")]
    with PacsBridge(config) as bridge:
        assert storescu(bridge.address[1], [f for f, _, _ in sent], calling="MODALITY1", called="CXR") == [0] * 3
        assert wait_for(lambda: bridge.stats["retries"] >= 3)  # every study tried and kept
        assert bridge.stats["delivered"] == 0 and bridge.stats["failed"] == 0
        with orthanc.start():
            assert bridge.wait_idle(WAIT_S)
            delivered = {sop: len(results_of(orthanc, study, sop)) for _, sop, study in sent}
    assert delivered == {sop: 2 for _, sop, _ in sent}, delivered  # SR + GSPS each, once: sent 3, delivered 3, lost 0


def _cxr_pacs(spool: Path, port: int, forward: str, url: str, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "cxr.cli", "pacs", "--port", str(port), "--allow-ae", "MODALITY1",
               "--url", url, "--forward", forward, "--spool", str(spool), "--gsps", "--retry-backoff", "0.2"]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    wait_port(port, timeout=60)
    return process


def test_bridge_killed_between_spooling_and_delivery_delivers_after_its_restart(server, films, tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc")  # down at first, so nothing can be delivered before the kill
    port, forward = stable_port(), f"127.0.0.1:{orthanc.dicom_port}:ORTHANC"
    sent = [fresh_film(films, "1.2.840.10008.1.2.4.70", tmp_path) for _ in range(2)]
    first = _cxr_pacs(tmp_path / "spool", port, forward, server.url, tmp_path / "first.log")
    try:
        assert storescu(port, [f for f, _, _ in sent], calling="MODALITY1", called="CXR") == [0, 0]  # = on disk
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    assert len(list((tmp_path / "spool" / "pending").glob("*.dcm"))) == 2
    with orthanc.start():
        second = _cxr_pacs(tmp_path / "spool", port, forward, server.url, tmp_path / "second.log")
        try:
            assert wait_for(lambda: all(len(results_of(orthanc, study, sop)) == 2 for _, sop, study in sent))
            time.sleep(1.0)  # a duplicate, if any, would arrive now
            results = [ds for _, sop, study in sent for ds in results_of(orthanc, study, sop)]
            assert len(results) == 4  # sent 2, delivered 2 (SR + GSPS each), lost 0, duplicated 0
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0
    assert not list((tmp_path / "spool" / "pending").glob("*.dcm"))
    check_iods(results, tmp_path / "results")  # built in the bridge's own process: checked where they landed


# ------------------------------------------------------------------------- DICOMweb


def test_stow_rs_with_basic_auth_stores_results_once(server, films, tmp_path):
    secret = tmp_path / "dicomweb.auth"
    secret.write_text("basic cxr:s3cret-pass\n")
    secret.chmod(0o600)
    with Orthanc(tmp_path / "orthanc", users={"cxr": "s3cret-pass"}) as orthanc:
        config = bridge_config(tmp_path / "spool", stable_port(), ("127.0.0.1", 1, "UNUSED"), server.url,
                               forward_dicomweb=orthanc.dicomweb, dicomweb_headers=read_auth(secret))
        with PacsBridge(config) as bridge:
            film, sop, study = fresh_film(films, "1.2.840.10008.1.2.4.57", tmp_path)
            assert storescu(bridge.address[1], [film, film], calling="MODALITY1", called="CXR") == [0, 0]
            assert bridge.wait_idle(WAIT_S) and bridge.stats["delivered"] == 1 and bridge.stats["duplicates"] == 1
        results = results_of(orthanc, study, sop)
        assert sorted(ds.SOPClassUID for ds in results) == sorted([COMPREHENSIVE_3D_SR, GSPS])
        check_iods(results, tmp_path / "results")


def test_stow_rs_refused_credentials_keep_the_study_in_the_spool(server, films, tmp_path):
    with Orthanc(tmp_path / "orthanc", users={"cxr": "right"}) as orthanc:
        config = bridge_config(tmp_path / "spool", stable_port(), ("127.0.0.1", 1, "UNUSED"), server.url,
                               forward_dicomweb=orthanc.dicomweb, dicomweb_headers={"Authorization": "Bearer wrong"})
        with PacsBridge(config) as bridge:
            film, sop, _ = fresh_film(films, "1.2.840.10008.1.2.1", tmp_path)
            assert storescu(bridge.address[1], [film], calling="MODALITY1", called="CXR") == [0]
            assert wait_for(lambda: bridge.stats["retries"] >= 2)
            assert bridge.stats["failed"] == 0 and (tmp_path / "spool" / "pending" / f"{sop}.dcm").is_file()


def test_cxr_predict_stow_stores_the_sr_and_gsps(server, films, tmp_path, capsys):
    from cxr.cli import main

    with Orthanc(tmp_path / "orthanc") as orthanc:
        film, sop, study = fresh_film(films, "1.2.840.10008.1.2.4.80", tmp_path)
        code = main(["predict", str(film), "--url", server.url, "--stow", orthanc.dicomweb,
                     "--gsps", str(tmp_path / "gsps")])
        out = capsys.readouterr().out
        assert code == 0 and "2 results stored at" in out, out
        results = results_of(orthanc, study, sop)
        assert sorted(ds.SOPClassUID for ds in results) == sorted([COMPREHENSIVE_3D_SR, GSPS])
