"""``torchrun --nproc-per-node 2 -m cxr.cli train`` on CPU (gloo), as training/README.md documents it.

The time budget (``--max-minutes``) must be one decision for all ranks: a rank that
stops alone leaves the others waiting in DDP's next all-reduce, a hang.  Ranks of a
real job disagree about the time whenever their clocks start at different moments or
one is slowed down (data loading, a busy host).  Here rank 1 reads a clock that runs
a million times fast -- a ``sitecustomize`` on the workers' ``PYTHONPATH``, test-side
only -- so it is out of time at its first check while rank 0, with a minute's budget,
is not; which rank runs out first, and after which iteration, is then deterministic.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch.distributed")

from cxr.training.checkpoint import load_checkpoint  # noqa: E402

TIMEOUT_S = 420  # generous for 2 shared cores; a hang must end the test, not CI

FAST_CLOCK_ON_RANK_1 = """\
import os
import time

if os.environ.get("RANK") == "1":
    _real, _t0 = time.monotonic, time.monotonic()
    time.monotonic = lambda: _t0 + (_real() - _t0) * 1e6
"""


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> Path:
    from cxr.training.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("ddp") / "data"
    generate(out, SynthConfig(images=16, seed=11, size=256), progress=False)  # 10 train studies: 5 per rank
    return out


def _torchrun(args: list[str], *, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """Run torchrun in its own session, so a hang kills the workers too, not only the launcher."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", *args]
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s (ranks hung in a collective?); output:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def _train_args(data: Path, run: Path, *options: str) -> list[str]:
    return ["-m", "cxr.cli", "train", "--data", str(data), "--preset", "cpu-demo", "--weights", "none", "--out", str(run), "--size", "128",
            "--batch-size", "2", *options]


def _env(*pythonpath: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), *filter(None, [os.environ.get("PYTHONPATH")])])}


def test_ranks_stop_after_the_same_iteration_when_the_budget_ends_mid_epoch(ddp_data, tmp_path):
    skew = tmp_path / "skew"
    skew.mkdir()
    (skew / "sitecustomize.py").write_text(FAST_CLOCK_ON_RANK_1)
    run = tmp_path / "run"
    proc = _torchrun(_train_args(ddp_data, run, "--epochs", "3", "--max-minutes", "1"), env=_env(skew), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]

    lines = re.findall(r"stopping after (iteration \d+/\d+ of epoch \d+) \(rank (\d) of 2\)", proc.stdout)
    stops = {rank: where for where, rank in lines}
    assert len(lines) == 2, lines
    assert set(stops) == {"0", "1"}, proc.stdout[-4000:]
    assert stops["0"] == stops["1"] == "iteration 1/2 of epoch 0", stops  # mid-epoch: 5 studies per rank, batch 2

    history = json.loads((run / "history.json").read_text())
    assert [row["iterations"] for row in history] == [1]
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(run / name)
        assert ckpt.preprocess.size == 128 and ckpt.meta["epoch"] == 0
    bar_starts = re.findall(r"epoch 0:\s+0%\|[^|]*\| 0/2 \[00:00<\?, \?it/s\]", proc.stdout)  # tqdm prints a bar's start once
    assert len(bar_starts) == 1, "a progress bar on rank 0 only"


def test_two_epochs_with_a_budget_left_over(ddp_data, tmp_path):
    # Rank 0 validates after each epoch while rank 1 goes on and waits in the next
    # epoch's first all-reduce; the budget's collectives must line up across that.
    run = tmp_path / "run"
    proc = _torchrun(_train_args(ddp_data, run, "--epochs", "2", "--max-minutes", "30"), env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "time budget" not in proc.stdout
    history = json.loads((run / "history.json").read_text())
    assert [(row["epoch"], row["iterations"]) for row in history] == [(0, 2), (1, 2)]
    assert load_checkpoint(run / "last.pt").meta["epoch"] == 1


def test_time_budget_in_one_process():
    from cxr.training.train import TimeBudget

    now = [100.0]
    budget = TimeBudget(0.5, clock=lambda: now[0])
    assert not budget.expired() and budget.fraction == 0.0
    now[0] += 15.0
    assert not budget.expired() and budget.fraction == 0.5
    now[0] += 15.5
    assert budget.expired() and budget.expired()
    assert not TimeBudget(None).expired() and TimeBudget(None).fraction == 0.0
