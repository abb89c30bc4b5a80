"""Result destinations (cxr.client.destinations): STOW-RS credentials, URLs, failure classes; the
spool keeping built results so a restart re-sends the same instances."""

from __future__ import annotations

import base64
import time

import pydicom
import pytest

pytest.importorskip("pynetdicom")

from cxr.client.destinations import AUTH_ENV, StowDestination, _status_is_transient, read_auth  # noqa: E402
from cxr.client.pacs import PacsBridge, PacsConfig  # noqa: E402
from cxr.client.pacs_cli import add_pacs_parser  # noqa: E402
from cxr.errors import InvalidFileError, InvalidOptionError, MissingFileError  # noqa: E402
from cxr.server.net import stable_port  # noqa: E402


def _secret(tmp_path, text: str, mode: int = 0o600):
    path = tmp_path / "auth"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_auth_from_a_file_basic_and_bearer(tmp_path):
    header = read_auth(_secret(tmp_path, "basic alice:pa:ss word\n"), environ={})["Authorization"]
    assert header == "Basic " + base64.b64encode(b"alice:pa:ss word").decode()
    assert read_auth(_secret(tmp_path, "Bearer abc.def"), environ={}) == {"Authorization": "Bearer abc.def"}


def test_auth_from_the_environment_and_none(tmp_path):
    assert read_auth(None, environ={AUTH_ENV: "bearer t0k3n"}) == {"Authorization": "Bearer t0k3n"}
    assert read_auth(None, environ={}) == {}


@pytest.mark.parametrize("text", ["alice:secret", "basic alice", "bearer", "digest x"])
def test_auth_in_another_form_is_refused_without_echoing_the_secret(tmp_path, text):
    with pytest.raises(InvalidOptionError, match="expected one line 'basic USER:PASSWORD' or 'bearer TOKEN'") as info:
        read_auth(_secret(tmp_path, text), environ={})
    assert "secret" not in str(info.value)


def test_auth_file_missing_or_readable_by_others_is_refused(tmp_path):
    with pytest.raises(MissingFileError, match="no such file"):
        read_auth(tmp_path / "nope", environ={})
    with pytest.raises(InvalidFileError, match="readable by other users; chmod 600"):  # mode bits: root too
        read_auth(_secret(tmp_path, "bearer x", 0o644), environ={})


def test_credentials_never_go_on_the_command_line(tmp_path):
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    parser = add_pacs_parser(sub)
    assert not any("password" in (a.dest or "") or "token" in (a.dest or "") for a in parser._actions)
    base = dict(allowed_aes=("PACS",), spool=tmp_path)
    with pytest.raises(InvalidOptionError, match="without credentials"):
        PacsConfig(forward_dicomweb="http://alice:secret@pacs:8042/dicom-web", **base)
    with pytest.raises(InvalidOptionError, match="http"):
        StowDestination("pacs:8042/dicom-web")
    assert "Authorization" not in repr(PacsConfig(forward_dicomweb="http://pacs/dicom-web",
                                                  dicomweb_headers={"Authorization": "Bearer x"}, **base))


def test_forward_and_forward_dicomweb_are_one_or_the_other(capsys):
    import argparse

    sub = argparse.ArgumentParser(prog="cxr").add_subparsers()
    parser = add_pacs_parser(sub)
    with pytest.raises(SystemExit):
        parser.parse_args(["--forward", "h:104:PACS", "--forward-dicomweb", "http://h/dicom-web", "--allow-any"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--allow-any"])
    assert "one of the arguments --forward --forward-dicomweb is required" in capsys.readouterr().err


@pytest.mark.parametrize("status,transient", [(0xA700, True), (0xA7FF, True), (0x0110, True), (0xA900, False),
                                              (0xC000, False), (0x0122, False)])
def test_which_failures_are_worth_retrying(status, transient):
    assert _status_is_transient(status) is transient


class _NoFindings:
    def predict(self, study, *, timeout_s=None):
        from cxr.client.results import StudyResult

        ds = study.dataset  # the bridge hands over a cxr.client.study.Study of the spooled bytes
        return StudyResult((), "m", "1", (int(ds.Rows), int(ds.Columns)), 1.0, str(ds.SOPInstanceUID))

    def close(self):
        pass


def test_results_built_before_a_restart_are_the_ones_delivered_after_it(synth_data, tmp_path):
    """Built once and kept in the spool: re-sent after a restart with the same SOPInstanceUID, so a
    PACS that got them before the crash stores them once."""
    from dicomnet import Destination, send

    film = sorted((synth_data / "dicom").glob("*.dcm"))[0]
    dest = Destination()  # down
    config = PacsConfig(port=stable_port(), allowed_aes=("MODALITY1",), forward=("127.0.0.1", dest.port, "PACS"),
                        spool=tmp_path / "spool", retry_backoff_s=0.1, max_attempts_per_pass=1, pass_pause_s=0.2)
    with PacsBridge(config, _NoFindings()) as first:
        assert send(first.address[1], [film]) == [0x0000]
        deadline = time.monotonic() + 30
        while first.stats["retries"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    uid = str(pydicom.dcmread(film, stop_before_pixels=True).SOPInstanceUID)
    kept = pydicom.dcmread(tmp_path / "spool" / "results" / uid / "0.dcm")
    with dest, PacsBridge(config, _NoFindings()) as second:
        assert second.wait_idle(30) and second.stats["delivered"] == 1
        (received,) = dest.received
    assert received.SOPInstanceUID == kept.SOPInstanceUID and received.SeriesInstanceUID == kept.SeriesInstanceUID
    assert not (tmp_path / "spool" / "results" / uid).exists()  # gone once delivered
