"""ONNX Runtime's CPU memory arena: a switch that reaches the session, and what the served detector uses.

Why: a soak of the served ensemble (benchmarks/README.md, "Soak") showed the arena
ratcheting the detector stub's RSS up in steps; without it RSS stays level but each
call is slower, so the served default keeps it and ``cpu_mem_arena=false`` turns it off.
"""

from __future__ import annotations

import time

import numpy as np
import pytest


def test_arena_option_reaches_the_session_and_changes_no_output(repository):
    from cxr.serving.runtime import OrtDetector

    path = repository / "detector/1/model.onnx"
    with_arena, without = OrtDetector(path, threads=1), OrtDetector(path, threads=1, memory_arena=False)
    assert with_arena.session.get_session_options().enable_cpu_mem_arena is True  # ONNX Runtime's default kept
    assert without.session.get_session_options().enable_cpu_mem_arena is False
    size = with_arena.session.get_inputs()[0].shape[-1]
    x = np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)
    for a, b in zip(with_arena(x), without(x)):
        np.testing.assert_array_equal(a, b)


def test_served_detector_reports_its_arena_setting(server):
    log = server.log_file
    deadline = time.monotonic() + 10
    while True:
        text = log.read_text(errors="replace") if log.is_file() else ""
        if "cpu memory arena" in text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # model.py logs the option read back from its live session, not the parameter it asked for.
    assert "detector: ONNX Runtime fp32, cpu memory arena on" in text, (
        f"the served detector did not report the default (arena on) in {log}: "
        + next((line for line in text.splitlines() if "cpu memory arena" in line), "no such line"))
