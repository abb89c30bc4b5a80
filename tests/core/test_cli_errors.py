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


def test_v_turns_on_debug_logging_of_cxr_only_and_vv_of_everything(monkeypatch, capsys):
    seen = {}

    def command(args):
        seen[args.verbose] = (logging.getLogger("cxr.x").getEffectiveLevel(), logging.getLogger("onnxruntime").getEffectiveLevel())
        return 0

    monkeypatch.setattr(training_cli, "cmd_data_info", command)
    for flags in ((), ("-v",), ("-vv",)):
        assert cli.main([*flags, "data", "info", "x"]) == 0
    assert seen == {0: (logging.INFO, logging.WARNING), 1: (logging.DEBUG, logging.WARNING), 2: (logging.DEBUG, logging.DEBUG)}
