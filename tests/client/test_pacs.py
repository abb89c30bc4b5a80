"""`cxr pacs` over loopback: dcmtk's storescu sends, the bridge, dcmtk's storescp receives.

The detector is the live session `server` where results matter, or a server of the
module's own where a test kills and restarts it; where only the bridge's bookkeeping
is under test (skips, permanent failures, a full queue) a stand-in client answers
instantly.  Backoffs are a fraction of a second and every wait is bounded.  Real PACS
routing (Orthanc), every transfer syntax and the faults with a real PACS are in
test_pacs_peers.py.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
pytest.importorskip("tritonclient.grpc")

from pydicom.uid import generate_uid  # noqa: E402

from cxr.client.errors import DetectorError  # noqa: E402
from cxr.client.pacs import (  # noqa: E402
    COMPREHENSIVE_3D_SR,
    GSPS,
    PacsBridge,
    PacsConfig,
)
from cxr.client.pacs_cli import add_pacs_parser, parse_forward  # noqa: E402
from cxr.client.pacs_queue import study_id  # noqa: E402
from cxr.client.results import StudyResult  # noqa: E402
import peers  # noqa: E402  (tests/peers.py)
from cxr.server.launcher import TritonServer  # noqa: E402
from cxr.server.net import free_port, stable_port
from dicomnet import SENDER, Destination, referenced_uids, send  # noqa: E402  (tests/dicomnet.py)

pytestmark = pytest.mark.e2e

WAIT_S = 60.0  # generous: the 2-core CI box also runs the server


def wait_for(predicate, timeout: float = WAIT_S) -> bool:
    return peers.wait_for(predicate, timeout)


def _by_modality(synth_data: Path, modality: str) -> list[Path]:
    files = [f for f in sorted((synth_data / "dicom").glob("*.dcm"))
             if pydicom.dcmread(f, stop_before_pixels=True).Modality == modality]
    assert len(files) >= 3, f"the synthetic set has fewer than 3 {modality} studies"
    return files


@pytest.fixture(scope="module")
def sources(synth_data) -> list[Path]:
    """Synthetic DX studies (ImagerPixelSpacing, PatientOrientation: all highdicom's TID 1603 reads)."""
    return _by_modality(synth_data, "DX")


@pytest.fixture(scope="module")
def cr_sources(synth_data) -> list[Path]:
    """Synthetic CR studies: PixelSpacing only, as many real CR plates write it."""
    return _by_modality(synth_data, "CR")


def fresh(path: Path, **changes) -> pydicom.Dataset:
    """A copy of a synthetic study as a new instance (new SOPInstanceUID), with ``changes``."""
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def config(tmp_path: Path, dest_port: int, url: str = "127.0.0.1:1", **overrides) -> PacsConfig:
    values = dict(port=free_port(), allowed_aes=(SENDER,), forward=("127.0.0.1", dest_port, "PACS"),
                  spool=tmp_path / "spool", detector_url=url, retry_backoff_s=0.1, max_attempts_per_pass=2,
                  pass_pause_s=0.3, timeout_s=30.0)
    values.update(overrides)
    return PacsConfig(**values)


class StubClient:
    """Answers like DetectorClient.predict: no findings, or a scripted error, or blocks."""

    def __init__(self, error: DetectorError | None = None, gate: threading.Event | None = None) -> None:
        self.error, self.gate, self.calls = error, gate, 0

    def predict(self, study, *, timeout_s=None) -> StudyResult:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(WAIT_S)
        if self.error is not None:
            raise self.error
        ds = study.dataset  # the bridge hands over a cxr.client.study.Study of the spooled bytes
        return StudyResult((), "stub", "0", (int(ds.Rows), int(ds.Columns)), 1.0, str(ds.SOPInstanceUID))

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ with the live detector


def test_one_sr_per_study_resend_is_idempotent_and_logs_carry_no_phi(server, sources, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, pynetdicom and highdicom included
    srcs = [pydicom.dcmread(p) for p in sources[:2]]
    with Destination() as dest, PacsBridge(config(tmp_path, dest.port, server.url)) as bridge:
        assert send(bridge.address[1], sources[:2]) == [0x0000, 0x0000]
        assert bridge.wait_idle(WAIT_S)
        assert len(dest.received) == 2
        for src in srcs:
            (sr,) = [d for d in dest.received if src.SOPInstanceUID in referenced_uids(d)]
            assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
            assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.SeriesInstanceUID != src.SeriesInstanceUID
            assert (tmp_path / "spool" / "done" / src.SOPInstanceUID).is_file()
        assert not list((tmp_path / "spool" / "pending").iterdir())

        assert send(bridge.address[1], sources[:1]) == [0x0000]  # the same instance again
        assert bridge.wait_idle(WAIT_S)
        time.sleep(0.5)
        assert len(dest.received) == 2
        stats = bridge.stats
    assert stats["received"] == 3 and stats["duplicates"] == 1 and stats["delivered"] == 2 and stats["failed"] == 0

    text = caplog.text
    for src in srcs:
        for value in (str(src.PatientName), src.PatientID, src.PatientBirthDate):
            assert value not in text
    assert "SYNTH^PATIENT" not in text
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("cxr"))
    assert all(src.SOPInstanceUID not in ours for src in srcs)  # a hash, never the UID
    assert f"study {study_id(srcs[0].SOPInstanceUID)} delivered" in ours
    assert f"study {study_id(srcs[0].SOPInstanceUID)} received again" in ours


def test_the_detector_gets_the_spooled_bytes_unchanged(server, sources, tmp_path, monkeypatch):
    """The bridge forwards the Part-10 bytes it spooled, byte for byte: it used to parse them into a
    Dataset and write that back with dcmwrite (re-encoding what the modality sent) before sending."""
    from cxr.client import DetectorClient
    from cxr.client.pacs_queue import Spool

    src, film = fresh(sources[1]), tmp_path / "film.dcm"
    src.save_as(film, enforce_file_format=True)  # written before dcmwrite is watched: the sender's copy
    spooled, sent, rewritten = {}, [], []
    write_pending, dcmwrite = Spool.write_pending, pydicom.dcmwrite  # the real ones, wrapped to watch them

    def watched_write_pending(self, uid, data):
        spooled[uid] = bytes(data)
        return write_pending(self, uid, data)

    def watched_dcmwrite(fp, dataset, *args, **kwargs):
        rewritten.append(str(dataset.get("SOPInstanceUID", "")))
        return dcmwrite(fp, dataset, *args, **kwargs)

    class Recording(DetectorClient):
        def _request(self, image, *args):
            request = super()._request(image, *args)
            sent.append(bytes(request.inputs[0].data[0]))  # IMAGE_BYTES, as the detector receives it
            return request

    monkeypatch.setattr(Spool, "write_pending", watched_write_pending)
    monkeypatch.setattr(pydicom, "dcmwrite", watched_dcmwrite)  # Dataset.save_as writes through it too
    with Recording(url=server.url, timeout_s=60.0, retries=0) as client, Destination() as dest, \
            PacsBridge(config(tmp_path, dest.port, server.url), client=client) as bridge:
        assert send(bridge.address[1], [film]) == [0x0000]
        assert bridge.wait_idle(WAIT_S)
    assert [d.SOPClassUID for d in dest.received] == [COMPREHENSIVE_3D_SR]
    assert sent == [spooled[src.SOPInstanceUID]]  # the very bytes spooled (and acknowledged)
    assert src.SOPInstanceUID not in rewritten  # only the SR was written, never the received study


def test_cr_with_pixel_spacing_only_gets_an_sr(server, cr_sources, tmp_path):
    src = fresh(cr_sources[0])
    assert "ImagerPixelSpacing" not in src and "PixelSpacing" in src
    with Destination() as dest, PacsBridge(config(tmp_path, dest.port, server.url)) as bridge:
        assert send(bridge.address[1], [src]) == [0x0000]
        assert bridge.wait_idle(WAIT_S)
        assert bridge.stats["failed"] == 0, (tmp_path / "spool" / "failed" / f"{src.SOPInstanceUID}.reason.txt").read_text()
    assert [d.SOPClassUID for d in dest.received] == [COMPREHENSIVE_3D_SR]


def test_gsps_is_sent_with_the_sr(server, sources, tmp_path):
    with Destination() as dest, PacsBridge(config(tmp_path, dest.port, server.url, gsps=True)) as bridge:
        src = fresh(sources[2])
        assert send(bridge.address[1], [src]) == [0x0000]
        assert bridge.wait_idle(WAIT_S)
    assert sorted(d.SOPClassUID for d in dest.received) == sorted([COMPREHENSIVE_3D_SR, GSPS])
    assert all(d.StudyInstanceUID == src.StudyInstanceUID for d in dest.received)


def test_destination_down_keeps_study_in_spool_until_it_comes_up(server, sources, tmp_path):
    dest = Destination()  # not started: connection refused
    with PacsBridge(config(tmp_path, dest.port, server.url)) as bridge:
        src = fresh(sources[0])
        assert send(bridge.address[1], [src]) == [0x0000]
        assert wait_for(lambda: bridge.stats["retries"] >= 2)  # a full pass failed
        assert (tmp_path / "spool" / "pending" / f"{src.SOPInstanceUID}.dcm").is_file()
        assert not bridge.wait_idle(0.1)
        with dest:
            assert bridge.wait_idle(WAIT_S)
            assert [d.SOPClassUID for d in dest.received] == [COMPREHENSIVE_3D_SR]
    assert not (tmp_path / "spool" / "pending" / f"{src.SOPInstanceUID}.dcm").exists()


def test_restart_delivers_what_the_spool_still_holds(server, sources, tmp_path):
    dest = Destination()
    src = fresh(sources[1])
    first = PacsBridge(config(tmp_path, dest.port, server.url))
    with first:
        assert send(first.address[1], [src]) == [0x0000]
        assert wait_for(lambda: first.stats["retries"] >= 1)
    assert (tmp_path / "spool" / "pending" / f"{src.SOPInstanceUID}.dcm").is_file()  # survived the stop

    with dest, PacsBridge(config(tmp_path, dest.port, server.url)) as second:  # same spool, new process state
        assert second.wait_idle(WAIT_S)
        assert second.stats["delivered"] == 1 and second.stats["received"] == 0
        assert src.SOPInstanceUID in referenced_uids(dest.received[0])


# ------------------------------------------------------------------ a detector we may kill


@pytest.fixture(scope="module")
def own_server(repository, tmp_path_factory):
    """A tritonserver of these tests alone, not started: they stop, kill and restart it
    on the same ports (the session ``server`` must survive)."""
    pytest.importorskip("pytriton")
    srv = TritonServer(model_repository=repository, grpc_port=stable_port(), http_port=stable_port(),
                       metrics_port=stable_port(), log_file=tmp_path_factory.mktemp("pacs-triton") / "tritonserver.log")
    yield srv
    srv.stop()


def _sr_per_source(received: list[pydicom.Dataset], uids: list[str]) -> Counter:
    """How many SRs the destination holds for each source instance (exactly once: all 1)."""
    assert all(d.SOPClassUID == COMPREHENSIVE_3D_SR for d in received)
    return Counter(uid for d in received for uid in referenced_uids(d) if uid in uids)


@pytest.mark.slow
def test_bridge_restarted_while_the_detector_is_down_delivers_every_study_once(own_server, sources, cr_sources,
                                                                              tmp_path):
    own_server.kill()  # not started yet, or killed: nothing listens on its port
    srcs = [fresh(p) for p in [*sources[:2], cr_sources[0]]]
    uids = [str(s.SOPInstanceUID) for s in srcs]
    pending = tmp_path / "spool" / "pending"
    with Destination() as dest:
        with PacsBridge(config(tmp_path, dest.port, own_server.url)) as first:
            assert send(first.address[1], srcs) == [0x0000] * len(srcs)  # acknowledged = on disk
            assert wait_for(lambda: first.stats["retries"] >= 1)  # the detector call failed and will be retried
        assert first.stats["delivered"] == 0 and dest.received == []
        assert sorted(p.stem for p in pending.glob("*.dcm")) == sorted(uids)  # the stop lost nothing

        own_server.start()  # the detector comes back after the bridge stopped
        with PacsBridge(config(tmp_path, dest.port, own_server.url)) as second:  # a new bridge, the same spool
            assert second.wait_idle(WAIT_S)
            stats = second.stats
        time.sleep(0.3)  # a duplicate would arrive now
    print(f"\nbridge restart, detector down: received {len(srcs)}, spooled across the stop {len(uids)}, "
          f"delivered after restart {stats['delivered']}, SRs at the destination {len(dest.received)}")
    assert stats["delivered"] == len(srcs) and stats["received"] == 0 and stats["failed"] == 0
    assert _sr_per_source(dest.received, uids) == Counter(uids) and len(dest.received) == len(srcs)
    assert not list(pending.iterdir())
    assert all((tmp_path / "spool" / "done" / uid).is_file() for uid in uids)


@pytest.mark.slow
def test_detector_killed_while_the_bridge_works_loses_nothing(own_server, sources, cr_sources, tmp_path):
    if own_server.process is None or own_server.process.poll() is not None:
        own_server.start()
    srcs = [fresh(p) for p in [*sources[:3], cr_sources[0]]]  # SRs take a while to build: some are left when it dies
    uids = [str(s.SOPInstanceUID) for s in srcs]
    pending = tmp_path / "spool" / "pending"
    with Destination() as dest, PacsBridge(config(tmp_path, dest.port, own_server.url)) as bridge:
        assert send(bridge.address[1], srcs) == [0x0000] * len(srcs)
        assert wait_for(lambda: bridge.stats["delivered"] >= 1)
        own_server.kill()  # SIGKILL while the worker is between studies or inside a detector call
        assert wait_for(lambda: bridge.stats["retries"] >= 1)
        # The worker is stuck on the detector now: nothing is delivered, nothing leaves the spool.
        left = len(list(pending.glob("*.dcm")))
        delivered_before = bridge.stats["delivered"]
        assert left == len(srcs) - delivered_before > 0, "every study was done before the kill"
        time.sleep(1.0)
        own_server.start()
        assert bridge.wait_idle(WAIT_S)
        time.sleep(0.3)  # a duplicate would arrive now
        stats = bridge.stats
    print(f"\ndetector killed under the bridge: received {len(srcs)}, delivered before the kill {delivered_before}, "
          f"still spooled {left}, delivered after the restart {stats['delivered'] - delivered_before}, "
          f"failed {stats['failed']}, lost {len(srcs) - stats['delivered'] - stats['failed']}")
    assert stats["delivered"] == len(srcs) and stats["failed"] == 0 and stats["retries"] >= 1
    assert _sr_per_source(dest.received, uids) == Counter(uids) and len(dest.received) == len(srcs)
    assert not list(pending.iterdir())


# ------------------------------------------------------------------ bridge bookkeeping (stand-in detector)


def test_disallowed_calling_ae_and_wrong_called_ae_are_rejected(sources, tmp_path, caplog):
    with Destination() as dest, PacsBridge(config(tmp_path, dest.port), client=StubClient()) as bridge:
        assert send(bridge.address[1], sources[:1], calling="STRANGER") is None
        assert send(bridge.address[1], sources[:1], called="NOT-CXR") is None
        assert send(bridge.address[1], sources[:1]) == [0x0000]  # the allowed sender still gets in
        assert bridge.wait_idle(WAIT_S)
        assert bridge.stats["received"] == 1
    assert len(dest.received) == 1
    assert "'STRANGER'" in caplog.text


@pytest.mark.parametrize("changes", [
    {"Modality": "MR"},
    {"BodyPartExamined": "HAND"},
    {"ViewPosition": "LL"},
], ids=["not-cr-dx", "not-chest", "lateral"])
def test_non_chest_frontal_cr_dx_is_acknowledged_but_skipped(sources, tmp_path, changes, caplog):
    caplog.set_level(logging.INFO, logger="cxr.pacs")
    stub = StubClient()
    with Destination() as dest, PacsBridge(config(tmp_path, dest.port), client=stub) as bridge:
        assert send(bridge.address[1], [fresh(sources[0], **changes)]) == [0x0000]
        assert bridge.wait_idle(5.0)
        assert bridge.stats["skipped"] == 1
    assert stub.calls == 0 and dest.received == []
    assert not list((tmp_path / "spool" / "pending").iterdir())
    assert "skipped: " + next(iter(changes)) in caplog.text


def test_absent_body_part_and_view_are_accepted(sources, tmp_path):
    with Destination() as dest, PacsBridge(config(tmp_path, dest.port), client=StubClient()) as bridge:
        assert send(bridge.address[1], [fresh(sources[0], BodyPartExamined=None, ViewPosition=None)]) == [0x0000]
        assert bridge.wait_idle(WAIT_S)
    assert [d.SOPClassUID for d in dest.received] == [COMPREHENSIVE_3D_SR]  # "no finding" report


def test_invalid_study_is_moved_to_failed_once(sources, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cxr.pacs")
    stub = StubClient(error=DetectorError("INVALID_ARGUMENT", "not a radiograph: 3 samples per pixel"))
    src = fresh(sources[0])
    with Destination() as dest, PacsBridge(config(tmp_path, dest.port), client=stub) as bridge:
        assert send(bridge.address[1], [src]) == [0x0000]
        assert bridge.wait_idle(WAIT_S)
        assert send(bridge.address[1], [src]) == [0x0000]  # resent: acknowledged, not retried
        assert bridge.wait_idle(WAIT_S)
        stats = bridge.stats
    failed = tmp_path / "spool" / "failed"
    assert (failed / f"{src.SOPInstanceUID}.dcm").is_file()
    assert "INVALID_ARGUMENT" in (failed / f"{src.SOPInstanceUID}.reason.txt").read_text()
    assert stats["failed"] == 1 and stats["retries"] == 0 and stub.calls == 1 and dest.received == []
    assert sum(" failed: " in r.getMessage() for r in caplog.records) == 1


def test_full_queue_answers_out_of_resources(sources, tmp_path):
    gate = threading.Event()
    stub = StubClient(gate=gate)
    with Destination() as dest, PacsBridge(config(tmp_path, dest.port, queue_size=1), client=stub) as bridge:
        try:
            assert send(bridge.address[1], [fresh(sources[0]), fresh(sources[1])]) == [0x0000, 0xA700]
            assert bridge.stats["refused"] == 1
        finally:
            gate.set()
        assert bridge.wait_idle(WAIT_S)
    assert len(dest.received) == 1


# ------------------------------------------------------------------ configuration and CLI


def test_config_refuses_to_default_open(tmp_path):
    with pytest.raises(ValueError, match="--allow-ae"):
        PacsConfig(spool=tmp_path)
    with pytest.raises(ValueError, match="AE title"):
        PacsConfig(spool=tmp_path, allowed_aes=("A" * 17,))
    assert PacsConfig(spool=tmp_path, allow_any=True).allowed_aes == ()


def test_parse_forward():
    assert parse_forward("10.0.0.5:104:PACS") == ("10.0.0.5", 104, "PACS")
    assert parse_forward("[::1]:11113:ARCHIVE") == ("::1", 11113, "ARCHIVE")
    for bad in ("pacs:104", "pacs:http:PACS", "pacs:0:PACS", "pacs:104:", "pacs:104:" + "X" * 17):
        with pytest.raises(argparse.ArgumentTypeError, match="HOST:PORT:AE|AE title|1..65535"):
            parse_forward(bad)


def test_cli_parser_wiring(capsys):
    parser = argparse.ArgumentParser(prog="cxr")
    add_pacs_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pacs", "--forward", "127.0.0.1:11113:PACS", "--allow-ae", "A", "--allow-ae", "B", "--gsps"])
    assert args.forward == ("127.0.0.1", 11113, "PACS") and args.allow_ae == ["A", "B"] and args.gsps
    assert args.port == 11112 and args.ae_title == "CXR" and args.func.__name__ == "cmd_pacs"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["pacs", "--forward", "pacs-only"])
    assert exc.value.code == 2 and "HOST:PORT:AE" in capsys.readouterr().err


def test_the_pacs_bridge_does_not_import_the_cli_back():
    """Issue 12: client/pacs.py imported cxr.cli, which imports it back; TLS options now live in client/tls.py."""
    import subprocess
    import sys

    code = ("import sys, cxr.client.pacs, cxr.client.pacs_cli, cxr.client.tls; "
            "sys.exit('cxr.cli' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
