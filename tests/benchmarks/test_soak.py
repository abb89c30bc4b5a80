"""cxr bench soak: the window / stability / memory maths on hand-made numbers, the load
driver with real client errors, process-tree RSS of real processes, and bounded soaks
against the session's live tritonserver (library and CLI).  No timing assertions and
none on the p99 ratio: speed is measured by `cxr bench soak`, never by a test."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time

import pytest

from cxr.benchmarks.procmem import (MB, RssSample, RssSampler, _children_by_ppid, _vm_rss, listener_pid, process_name,
                                    process_tree, rss_summary, tree_rss)
from cxr.benchmarks.soak import (Outcome, SoakConfig, _measured_pid, drive, gate_failures, load_studies, p99_stability,
                                 split_windows, window_stats, write_soak)
from cxr.client.errors import DetectorError


def _ok(start: float, latency: float) -> Outcome:
    return Outcome(start, start + latency, True)


# ------------------------------------------------------------------------- the maths


def test_windows_split_by_completion_order_in_near_equal_parts():
    outcomes = [_ok(float(i), 0.5) for i in range(10)]
    random.Random(0).shuffle(outcomes)  # workers append out of order
    windows = split_windows(outcomes, 3)
    assert [len(w) for w in windows] == [4, 3, 3]
    assert [o.start for w in windows for o in w] == [float(i) for i in range(10)]
    assert len(split_windows(outcomes[:2], 10)) == 2  # never an empty window
    assert split_windows([], 10) == []


def test_window_stats_percentiles_errors_and_throughput():
    # Window 0 ends at t=2 (4 requests in 2 s); window 1 from t=2 to t=4 holds 1 failure.
    w0 = [_ok(0.0, 0.5), _ok(0.5, 0.5), _ok(1.0, 0.5), _ok(1.0, 1.0)]
    w1 = [_ok(2.0, 0.1), Outcome(2.5, 3.0, False, "UNAVAILABLE"), _ok(3.0, 1.0)]
    rows = window_stats([w0, w1])
    assert rows[0]["requests"] == 4 and rows[0]["errors"] == 0
    assert rows[0]["p50_ms"] == pytest.approx(500.0) and rows[0]["p99_ms"] == pytest.approx(985.0)
    assert rows[0]["requests_per_s"] == pytest.approx(2.0) and (rows[0]["start_s"], rows[0]["end_s"]) == (0.0, 2.0)
    assert rows[1]["errors"] == 1 and rows[1]["requests_per_s"] == pytest.approx(1.5)  # 3 requests from t=2 to t=4
    assert rows[1]["p50_ms"] == pytest.approx(550.0)  # the failure's latency is not a latency figure


def test_p99_stability_pools_thirds_and_skips_the_warmup_window():
    t = 0.0
    windows = []
    for i, latency in enumerate([5.0] + [0.010] * 3 + [0.020] * 3 + [0.030] * 3):  # warm-up window is slow
        windows.append([_ok(t + k, latency) for k in range(5)])
        t += 10
    st = p99_stability(windows)
    assert st["first_windows"] == [1, 3] and st["last_windows"] == [7, 9]
    assert st["p99_first_ms"] == pytest.approx(10.0) and st["p99_last_ms"] == pytest.approx(30.0)
    assert st["ratio"] == pytest.approx(3.0)
    with_warmup = p99_stability(windows, warmup_windows=0)  # the slow first window now counts
    assert with_warmup["p99_first_ms"] > 1000.0
    short = p99_stability(windows[:3])
    assert short["ratio"] is None and "at least 4" in short["reason"]


def test_rss_summary_drift_peak_and_slope_per_1000_requests():
    # 100 MB, +2 MB per 100 requests, with a 5 MB transient peak that least squares shrugs off.
    samples = [RssSample(t=float(i), rss_bytes=int((100 + 2 * i) * MB), completed=100 * i, processes=4) for i in range(11)]
    samples[5] = RssSample(5.0, int(115 * MB), 500, 5)
    s = rss_summary(samples)
    assert (s["start_mb"], s["end_mb"], s["peak_mb"]) == (pytest.approx(100.0), pytest.approx(120.0), pytest.approx(120.0))
    assert s["drift_mb"] == pytest.approx(20.0) and s["drift_pct"] == pytest.approx(20.0)
    assert s["slope_mb_per_1000_requests"] == pytest.approx(20.0, abs=0.5)
    assert s["slope_mb_per_min"] == pytest.approx(120.0, abs=3.0)  # one sample per second
    assert s["processes"] == 5 and s["samples"] == 11
    flat = rss_summary([RssSample(0.0, int(50 * MB), 0, 1)])
    assert flat["drift_mb"] == 0.0 and flat["slope_mb_per_1000_requests"] is None
    assert rss_summary([]) == {"measured": False}


def _report(failed=0, ratio=1.1, rss=None):
    return {"requests": {"sent": 100, "failed": failed, "errors_by_status": {"UNAVAILABLE": failed} if failed else {},
                         "first_errors": {"UNAVAILABLE": "UNAVAILABLE: connection refused"} if failed else {}},
            "p99_stability": {"ratio": ratio}, "rss": rss or {"measured": True, "drift_mb": 12.0}}


def test_gates_fail_on_errors_and_only_on_the_gates_that_are_set(tmp_path):
    off = SoakConfig(out=tmp_path, url="127.0.0.1:1")
    assert gate_failures(_report(ratio=9.0, rss={"measured": True, "drift_mb": 900.0}), off) == []
    [reason] = gate_failures(_report(failed=3), off)
    assert "3 of 100 requests failed (UNAVAILABLE x3)" in reason and "connection refused" in reason
    on = SoakConfig(out=tmp_path, url="127.0.0.1:1", max_p99_ratio=1.5, max_rss_drift_mb=10.0)
    reasons = gate_failures(_report(ratio=2.0), on)
    assert len(reasons) == 2 and "--max-p99-ratio 1.5" in reasons[0] and "+12.0 MB > --max-rss-drift-mb 10.0" in reasons[1]
    assert gate_failures(_report(ratio=1.2, rss={"measured": True, "drift_mb": 9.0}), on) == []
    unmeasured = gate_failures(_report(rss={"measured": False, "reason": "remote host"}), on)
    assert unmeasured == ["--max-rss-drift-mb given but server RSS was not measured (remote host)"]


def test_config_rejects_nonsense_before_starting_anything(tmp_path):
    with pytest.raises(ValueError, match="--model-repository DIR"):
        SoakConfig(out=tmp_path)
    with pytest.raises(ValueError, match="--concurrency"):
        SoakConfig(out=tmp_path, url="127.0.0.1:1", concurrency=0)


# ---------------------------------------------------------------------------- driver


def test_drive_sends_each_request_once_and_records_failures_by_status():
    seen = []

    def predict(study: bytes):
        seen.append(study)
        if study == b"bad":
            raise DetectorError("INVALID_ARGUMENT", "not an image")
        if study == b"boom":
            raise RuntimeError("bug")

    done = []
    outcomes, messages = drive(predict, [b"a", b"bad", b"b", b"boom"], requests=21, concurrency=3, on_done=done.append)
    assert len(outcomes) == len(seen) == len(done) == 21
    assert sorted(seen) == sorted([b"a", b"bad", b"b", b"boom"] * 5 + [b"a"])  # cycled, none twice too often
    statuses = [o.status for o in outcomes]
    assert statuses.count("INVALID_ARGUMENT") == 5 and statuses.count("RuntimeError") == 5 and statuses.count("OK") == 11
    assert messages == {"INVALID_ARGUMENT": "INVALID_ARGUMENT: not an image", "RuntimeError": "bug"}
    assert all(0.0 <= o.start <= o.end for o in outcomes)
    assert drive(predict, [b"a"], requests=0, concurrency=2) == ([], {})


def test_studies_from_a_data_folder_interleave_png_and_dicom(synth_data, tmp_path):
    studies, source = load_studies(synth_data, 6)
    assert [s[:8] == b"\x89PNG\r\n\x1a\n" for s in studies] == [True, False] * 3  # images/ then dicom/, alternating
    assert all(s[128:132] == b"DICM" for s in studies[1::2])
    assert source == f"6 studies of {synth_data} (3 png, 3 dcm)"
    with pytest.raises(FileNotFoundError, match="no .png/.dcm/.jpg/.jpeg files"):
        load_studies(tmp_path, 4)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_studies(tmp_path / "missing", 4)


# ----------------------------------------------------------------- process memory


def test_rss_of_a_real_process_tree_includes_the_grandchild(tmp_path):
    # parent -> child holding 64 MB it has written (so resident); the child prints its pid.
    child = "import sys, time; b = b'x' * (64 << 20); print('ready', flush=True); time.sleep(60)"
    parent = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', %r], stdout=sys.stdout);"
              "print(p.pid, flush=True); p.wait()" % child)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    try:
        kid = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "ready"
        assert process_tree(proc.pid) == [proc.pid, kid]
        assert _children_by_ppid(proc.pid) == [kid]  # the fallback finds the same child
        rss, n = tree_rss(proc.pid)
        assert n == 2
        assert rss > _vm_rss(proc.pid) + 60 * MB  # the child's 64 MB counted
        assert _vm_rss(kid) > 60 * MB
        assert process_name(kid).startswith("python")
        with RssSampler(proc.pid, lambda: 0, time.perf_counter, interval=0.05) as sampler:
            time.sleep(0.3)
        assert len(sampler.samples) >= 3 and all(s.processes == 2 for s in sampler.samples)
        assert {p["pid"] for p in sampler.by_process()} == {proc.pid, kid}
    finally:
        proc.kill()
        os.kill(kid, 9)
        proc.wait()
    with pytest.raises(ProcessLookupError, match=f"no process {proc.pid}"):
        tree_rss(proc.pid)


def test_listener_pid_finds_the_process_listening_on_a_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert listener_pid(port) is None  # bound, not listening
        s.listen()
        assert listener_pid(port) == os.getpid()


def test_only_a_loopback_url_is_looked_up_among_this_hosts_listeners(tmp_path):
    """0.0.0.0 is not loopback (cxr.server.net.is_loopback is the one rule); all of 127.0.0.0/8 is."""
    cfg = SoakConfig(out=tmp_path, url="set-per-call:1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for host in ("127.0.0.1", "127.0.0.2", "localhost", "[::1]"):
            assert _measured_pid(cfg, f"{host}:{port}", None) == (os.getpid(), f"local listener on port {port}"), host
        for host in ("0.0.0.0", "10.1.2.3", "pacs-gw.example"):
            pid, source = _measured_pid(cfg, f"{host}:{port}", None)
            assert pid is None and source.startswith(f"{host} is not a loopback address; pass --server-pid"), host


# --------------------------------------------------------------- against a server


@pytest.mark.e2e
def test_soak_against_the_live_server_has_no_failures_and_writes_its_files(server, synth_data, tmp_path):
    from cxr.benchmarks.soak import run_soak

    cfg = SoakConfig(out=tmp_path, url=server.url, server_pid=server.process.pid, data=synth_data, images=8,
                     requests=120, concurrency=4, warmup=4, rss_interval=0.2, progress=False)
    report = run_soak(cfg)
    r = report["requests"]
    assert (r["sent"], r["recorded"], r["warmup"], r["failed"]) == (124, 120, 4, 0), r
    assert [w["window"] for w in report["windows"]] == list(range(10))
    assert sum(w["requests"] for w in report["windows"]) == 120 and all(w["p99_ms"] > 0 for w in report["windows"])
    assert report["p99_stability"]["ratio"] is not None  # computed; its value is not a test's business
    rss = report["rss"]
    assert rss["measured"] and rss["pid"] == server.process.pid and rss["pid_source"] == "--server-pid"
    assert rss["start_mb"] > 0 and rss["peak_mb"] >= max(rss["start_mb"], rss["end_mb"])
    assert rss["processes"] >= 4  # tritonserver + the preprocess, detector and postprocess stubs
    names = {p["name"] for p in rss["by_process"]}
    assert {"tritonserver", "preprocess stub", "detector stub", "postprocess stub"} <= names, names
    assert all(p["start_mb"] > 0 and p["end_mb"] > 0 for p in rss["by_process"])
    assert rss["after_window0"]["start_mb"] > 0
    assert len(report["rss_samples"]) >= 2 and report["rss_samples"][-1]["completed"] == 120
    assert len(report["samples"]["latency_ms"]) == 120
    written = write_soak(report, tmp_path)
    assert json.loads(written["json"].read_text())["requests"]["failed"] == 0
    assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
def test_cli_soak_finds_the_local_server_and_exits_1_on_failures(server, synth_data, tmp_path, capsys):
    from cxr.cli import main

    out = tmp_path / "soak"
    rc = main(["bench", "soak", "--url", server.url, "--data", str(synth_data), "--images", "4", "--requests", "40",
               "--concurrency", "2", "--warmup", "2", "--windows", "4", "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "| window | requests | errors | p50 ms | p99 ms | req/s | server RSS MB |" in printed.out
    assert "42 sent (2 warm-up), 0 failed" in printed.out
    report = json.loads((out / "soak.json").read_text())
    assert report["passed"] is True and report["failures"] == []
    assert report["rss"]["pid"] == server.process.pid  # no --server-pid: found through the listening port
    assert report["rss"]["pid_source"].startswith("local listener")
    assert (out / "soak.png").is_file()

    # A deadline no request can meet: every request fails, none is retried or hidden, exit 1.
    rc = main(["bench", "soak", "--url", server.url, "--data", str(synth_data), "--images", "2", "--requests", "6",
               "--concurrency", "2", "--warmup", "0", "--timeout", "0.001", "--out", str(tmp_path / "fail"), "--quiet"])
    printed = capsys.readouterr()
    assert rc == 1
    assert "cxr bench soak: 6 of 6 requests failed (DEADLINE_EXCEEDED x6)" in printed.err
    assert json.loads((tmp_path / "fail" / "soak.json").read_text())["passed"] is False


def test_cli_names_what_is_missing(tmp_path, capsys):
    from cxr.cli import main

    assert main(["bench", "latency", "--out", str(tmp_path)]) == 2
    assert "cxr bench latency needs --checkpoint" in capsys.readouterr().err
    assert main(["bench", "soak", "--url", "127.0.0.1:1", "--concurrency", "1,2", "--out", str(tmp_path)]) == 2
    assert "soak runs at one --concurrency, got 1,2" in capsys.readouterr().err
