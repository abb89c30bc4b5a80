"""The command line's error policy and verbosity (cxr.cli.main)."""

from __future__ import annotations

import logging

import pytest

from cxr import cli
from cxr.training import cli as training_cli  # owns `cxr data info`
from cxr.errors import InvalidImageError, InvalidOptionError, MissingFileError, UsageError


def _run(monkeypatch, capsys, exc: BaseException, *flags: str) -> tuple[int, str]:
    def command(args):
        raise exc

    monkeypatch.setattr(training_cli, "cmd_data_info", command)
    code = cli.main([*flags, "data", "info", "somewhere"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("exc", [UsageError("no GPU here"), InvalidOptionError("size must be >= 32"),
                                 MissingFileError("no such folder: x"), InvalidImageError("not a radiograph")])
def test_user_errors_are_one_line_with_status_2(monkeypatch, capsys, exc):
    for flags in ((), ("-v",)):
        code, err = _run(monkeypatch, capsys, exc, *flags)
        assert code == 2 and err == f"cxr data: error: {exc}\n"


@pytest.mark.parametrize("exc", [ValueError("shapes (3,) and (4,) differ"), KeyError("boxes"), ZeroDivisionError("x")])
def test_a_bug_is_reported_as_one_line_and_its_traceback_comes_with_v(monkeypatch, capsys, exc):
    """ValueError and KeyError used to be printed as if the user had made a mistake."""
    code, err = _run(monkeypatch, capsys, exc)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"internal error: {type(exc).__name__}" in err and "run with -v" in err and "Traceback" not in err
    code, err = _run(monkeypatch, capsys, exc, "-v")
    assert code == 1 and "Traceback (most recent call last)" in err and f"internal error: {type(exc).__name__}" in err


@pytest.mark.parametrize("status", ["INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED"])
def test_a_server_failure_is_a_failure_of_the_system_with_status_1(monkeypatch, capsys, status):
    """DetectorError was a UsageError: a bug on the server exited 2, as if the user had erred."""
    from cxr.client.errors import DetectorError

    exc = DetectorError(status, "internal error in postprocess (ZeroDivisionError: division by zero)")
    for flags in ((), ("-v",)):
        code, err = _run(monkeypatch, capsys, exc, *flags)
        assert code == 1 and err == f"cxr data: failed: {exc}\n"


@pytest.mark.parametrize("status", ["CLIENT", "INVALID_ARGUMENT", "FAILED_PRECONDITION"])
def test_a_refused_study_or_option_stays_a_user_error(monkeypatch, capsys, status):
    from cxr.client.errors import DetectorError

    exc = DetectorError(status, "not a radiograph: 3 bytes")
    code, err = _run(monkeypatch, capsys, exc)
    assert code == 2 and err == f"cxr data: error: {exc}\n"


def test_a_bad_url_is_refused_by_the_client_with_status_2(capsys):
    """The real path: cxr predict's client refuses a URL with a scheme before anything is sent."""
    pytest.importorskip("tritonclient.grpc")
    code = cli.main(["predict", "study.png", "--url", "http://127.0.0.1:8001"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("cxr predict: error: CLIENT: url must be 'host:port'")


def test_v_turns_on_debug_logging_of_cxr_only_and_vv_of_everything(monkeypatch, capsys):
    seen = {}

    def command(args):
        seen[args.verbose] = (logging.getLogger("cxr.x").getEffectiveLevel(), logging.getLogger("onnxruntime").getEffectiveLevel())
        return 0

    monkeypatch.setattr(training_cli, "cmd_data_info", command)
    for flags in ((), ("-v",), ("-vv",)):
        assert cli.main([*flags, "data", "info", "x"]) == 0
    assert seen == {0: (logging.INFO, logging.WARNING), 1: (logging.DEBUG, logging.WARNING), 2: (logging.DEBUG, logging.DEBUG)}
