"""`cxr bench` command lines: subcommands, the bare form that runs `all`, soak's own options.
Parsing only (no model, no server); the runs themselves are in test_bench.py and test_soak.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr.benchmarks.cli import config_from_args, main, soak_config
from cxr.cli import build_parser
from cxr.errors import UsageError


def parse(*argv: str):
    return build_parser().parse_args(["bench", *argv])


def test_bare_bench_runs_all_with_the_config_defaults():
    cfg = config_from_args(parse("--quick", "--checkpoint", "c.pt", "--repository", "r", "--out", "o"))
    assert (cfg.mode, cfg.quick, cfg.checkpoint, cfg.repository, cfg.out) == ("all", True, Path("c.pt"), Path("r"), Path("o"))
    assert (cfg.backends, cfg.batches, cfg.concurrency, cfg.requests, cfg.served_precision) == ((), (1, 4), (), None, None)
    assert cfg.progress is False  # --quick runs are quiet, as before
    assert config_from_args(parse("--checkpoint", "c.pt", "--out", "o")).repository == Path("model_repository")


def test_subcommands_take_the_benchmark_options_before_or_after_their_name():
    cfg = config_from_args(parse("latency", "--checkpoint", "c.pt", "--out", "o", "--concurrency", "1,2",
                                 "--backends", "onnx,triton", "--requests", "3"))
    assert (cfg.mode, cfg.concurrency, cfg.backends, cfg.requests) == ("latency", (1, 2), ("onnx", "triton"), 3)
    # An option before the name is not reset by the subcommand's default.
    cfg = config_from_args(parse("--quick", "--out", "o", "parity", "--checkpoint", "c.pt"))
    assert (cfg.mode, cfg.quick, cfg.out) == ("parity", True, Path("o"))
    with pytest.raises(UsageError, match="cxr bench all needs --out DIR"):
        config_from_args(parse("--checkpoint", "c.pt"))


def test_soak_options_have_their_own_meanings_and_defaults():
    cfg = soak_config(parse("soak", "--model-repository", "r", "--requests", "40", "--concurrency", "2", "--out", "o"))
    assert (cfg.repository, cfg.requests, cfg.concurrency, cfg.url, cfg.out) == (Path("r"), 40, 2, None, Path("o"))
    assert (cfg.warmup, cfg.windows, cfg.images, cfg.timeout, cfg.seconds) == (16, 10, 32, 60.0, None)  # SoakConfig's
    bare = soak_config(parse("soak", "--out", "o"))
    assert (bare.repository, bare.requests, bare.concurrency) == (Path("model_repository"), 2000, 8)
    quick = soak_config(parse("soak", "--quick", "--requests", "50", "--url", "127.0.0.1:1", "--out", "o"))
    assert (quick.requests, quick.concurrency, quick.warmup, quick.repository) == (50, 4, 8, None)  # explicit wins


def test_soak_help_lists_only_soak_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse("soak", "--help")
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--windows" in text and "--max-rss-drift-mb" in text and "--model-repository" in text
    for foreign in ("--checkpoint", "--backends", "--batches", "--served-precision", "--strict", "per point"):
        assert foreign not in text, foreign


def test_an_option_of_the_other_command_is_refused(capsys):
    for argv in (("latency", "--checkpoint", "c.pt", "--out", "o", "--windows", "3"),
                 ("soak", "--out", "o", "--checkpoint", "c.pt"), ("soak", "--out", "o", "--backends", "onnx")):
        with pytest.raises(SystemExit) as exit_:
            parse(*argv)
        assert exit_.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err
    # Given before `soak`, where argparse cannot refuse it: soak names it instead of dropping it.
    with pytest.raises(UsageError, match="cxr bench soak does not take --backends"):
        soak_config(parse("--backends", "onnx", "soak", "--out", "o"))


def test_module_entry_point_has_the_same_subcommands(capsys):
    with pytest.raises(UsageError, match="cxr bench latency needs --checkpoint"):
        main(["latency", "--out", "o"])
    with pytest.raises(SystemExit):
        main(["soak", "--help"])
    assert "--server-pid" in capsys.readouterr().out
