"""cxr.benchmarks: statistics on a fake clock, the report format on fake results, the
perf_analyzer data round trip, TensorRT without a GPU, and one --quick run of the
whole harness on the session's tiny model and server.  No timing assertions: the
numbers themselves are measured by `cxr bench`, never by a test."""

from __future__ import annotations

import base64
import json
import math
import struct

import numpy as np
import pytest

from cxr.benchmarks.backends import BACKENDS, Backend, Unavailable, open_in_process
from cxr.benchmarks.parity import BackendParity
from cxr.benchmarks.perf_data import (bytes_entry, command_lines, decode_entry, deserialize_bytes_tensor,
                                      perf_analyzer_data, pixels_entry, write_perf_data)
from cxr.benchmarks.report import BACKEND_KEYS, STATUSES, build_report, joined_table, render_markdown, write_report
from cxr.benchmarks.stats import CallTimer, LoadConfig, Sample, percentile_ms, run_point, summarize


class FakeClock:
    """Time moves only when a fake backend says its call took so long."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# ------------------------------------------------------------------------ statistics


def test_percentiles_of_known_latencies():
    lat = [0.010, 0.020, 0.030, 0.040]
    assert percentile_ms(lat, 50) == pytest.approx(25.0)
    assert percentile_ms(lat, 95) == pytest.approx(38.5)  # linear interpolation, numpy's default
    assert percentile_ms(lat, 99) == pytest.approx(39.7)
    assert percentile_ms([], 50) is None


def test_throughput_counts_the_busy_window_not_the_sum_of_latencies():
    # Two concurrent 1 s requests of 1 image each in a 1 s window: 2 images/s, not 1.
    concurrent = summarize([Sample(0.0, 1.0), Sample(0.0, 1.0)], backend="x", concurrency=2, batch=1)
    assert concurrent.images_per_s == pytest.approx(2.0)
    assert concurrent.p50_ms == pytest.approx(1000.0)
    # Batched requests count their images; the window runs from first start to last end.
    batched = summarize([Sample(10.0, 10.5, 4), Sample(10.5, 11.0, 4)], backend="x", concurrency=1, batch=4)
    assert (batched.images, batched.requests, batched.wall_s) == (8, 2, pytest.approx(1.0))
    assert batched.images_per_s == pytest.approx(8.0)


def test_empty_point_has_no_figures():
    s = summarize([], backend="x", concurrency=1, batch=1, errors=3)
    assert (s.p50_ms, s.images_per_s, s.requests, s.errors) == (None, None, 0, 3)


def test_run_point_on_a_fake_clock_records_only_after_warmup():
    clock = FakeClock()
    durations = iter([5.0, 5.0, 0.010, 0.020, 0.030, 0.040, 0.050])  # two warm-up calls first
    seen = []

    def backend(batch):
        seen.append(list(batch))
        clock.advance(next(durations))

    stats, samples = run_point(backend, ["a", "b", "c"], backend="fake", load=LoadConfig(requests=5, seconds=60, warmup=2),
                               clock=clock)
    assert [round(s.latency_s, 6) for s in samples] == [0.01, 0.02, 0.03, 0.04, 0.05]
    assert stats.p50_ms == pytest.approx(30.0)
    assert stats.images_per_s == pytest.approx(5 / 0.15)
    assert seen[:3] == [["a"], ["b"], ["c"]]  # items are cycled


def test_run_point_batches_cycle_items_and_count_images():
    clock = FakeClock()

    def backend(batch):
        clock.advance(0.1 * len(batch))

    stats, samples = run_point(backend, ["a", "b", "c"], backend="fake", batch=4, load=LoadConfig(requests=3, seconds=60, warmup=0),
                               clock=clock)
    assert stats.images == 12 and all(s.images == 4 for s in samples)
    assert stats.images_per_s == pytest.approx(10.0)  # 4 images per 0.4 s
    assert stats.p50_ms == pytest.approx(400.0)


def test_run_point_stops_at_the_time_limit():
    clock = FakeClock()
    stats, _ = run_point(lambda b: clock.advance(1.0), [1], backend="fake",
                         load=LoadConfig(requests=100, seconds=3.5, warmup=0), clock=clock)
    assert stats.requests == 4  # starts at t=0,1,2,3; at t=4 the limit has passed


def test_failed_calls_are_errors_not_fast_samples():
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise RuntimeError("server said no")

    stats, samples = run_point(flaky, [1], backend="fake", load=LoadConfig(requests=6, seconds=60, warmup=0))
    assert stats.errors == 3 and stats.requests == 3 == len(samples)
    assert "server said no" in stats.extra["first_error"]


def test_concurrent_workers_complete_the_requested_count():
    stats, samples = run_point(lambda b: None, list(range(5)), backend="fake", concurrency=3, batch=2,
                               load=LoadConfig(requests=12, seconds=30, warmup=1))
    assert 12 <= stats.requests <= 12 + 2  # at most concurrency - 1 in flight when the count is reached
    assert stats.images == 2 * stats.requests == sum(s.images for s in samples)
    with pytest.raises(ValueError, match="concurrency"):
        run_point(lambda b: None, [1], backend="fake", concurrency=0)


def test_call_timer_gives_model_time_per_image():
    clock = FakeClock()

    def detector(batch):
        clock.advance(0.008 * len(batch))
        return "raw"

    timer = CallTimer(detector, clock=clock)
    assert timer.ms_per_image() is None
    assert timer(np.zeros((4, 3, 8, 8))) == "raw" and timer(np.zeros((1, 3, 8, 8))) == "raw"
    assert timer.ms_per_image() == pytest.approx(8.0)
    timer.reset()
    assert timer.calls == []


# ---------------------------------------------------------------------------- report


def _points(name, p50s, ips):
    out = []
    for c, (p50, rate) in enumerate(zip(p50s, ips), start=1):
        s = summarize([Sample(0.0, p50 / 1000.0)], backend=name, concurrency=c, batch=1)
        s.images_per_s, s.model_ms_per_image = rate, p50 / 2
        out.append(s)
    return out


def _parity(name, passed=True, map50=0.5, delta=0.0):
    return BackendParity(name=name, n_images=4, passed=passed, map50=map50, delta_map50=delta, froc_at_1fp=0.6,
                         per_class_ap50={"Effusion": 0.7, "Mass": float("nan")}, match_rate=1.0 if passed else 0.5,
                         max_score_delta=1e-6, median_score_delta=1e-7, max_box_dev_px=0.01,
                         tolerance="fp32", failures=[] if passed else ["match rate 0.5000 < 0.99"])


@pytest.fixture
def fake_report():
    def backend(name, precision="fp32"):
        return Backend(name, run=lambda images: [], precision=precision, size_mb=12.5, detail=f"{name} (fake)")

    backends = [backend("pytorch"), backend("onnx"), backend("onnx-int8", "int8"),
                Unavailable("tensorrt", "TensorRT FP16 needs an NVIDIA GPU and none was found"), backend("triton")]
    points = {"pytorch": _points("pytorch", [40, 70, 130], [25, 28, 30]), "onnx": _points("onnx", [20, 35, 70], [50, 55, 57]),
              "onnx-int8": _points("onnx-int8", [10, 18, 35], [100, 110, 112]), "triton": _points("triton", [24, 30, 45], [40, 65, 88])}
    parity = {"pytorch": _parity("pytorch"), "onnx": _parity("onnx"), "onnx-int8": _parity("onnx-int8", False, 0.45, -0.05),
              "triton": _parity("triton")}
    env = {"cpu": {"model": "Fake CPU", "usable_cores": 2, "simd": ["avx2"], "avx512": False, "vnni": False},
           "gpu": None, "libraries": {"torch": "2.x", "tensorrt": None}, "input_size": 128}
    return build_report(env=env, backends=backends, points=points, parity=parity, flops=2e9, peak={"peak_gflops": 100.0},
                        images="4 fake studies", config={"quick": True})


def test_report_schema_has_every_backend_key_and_status(fake_report):
    assert [b["name"] for b in fake_report["backends"]] == ["pytorch", "onnx", "onnx-int8", "tensorrt", "triton"]
    for row in fake_report["backends"]:
        assert set(BACKEND_KEYS) <= set(row)
        assert row["status"] in STATUSES
    rows = {b["name"]: b for b in fake_report["backends"]}
    assert rows["tensorrt"]["status"] == "unavailable" and "GPU" in rows["tensorrt"]["reason"]
    assert rows["onnx-int8"]["status"] == "failed-parity" and "match rate" in rows["onnx-int8"]["reason"]
    assert rows["onnx"]["status"] == "ok" and rows["onnx"]["reason"] is None
    assert fake_report["serving_overhead"] == pytest.approx(24 / 20)
    assert rows["onnx"]["speedup_vs_pytorch"] == pytest.approx(2.0)
    assert rows["onnx"]["p50_ms"] == pytest.approx(20.0) and rows["onnx"]["images_per_s"] == 57  # best of the sweep
    assert rows["onnx"]["achieved_gflops"] == pytest.approx(2e9 / 0.010 / 1e9)  # model-only 10 ms/image
    assert rows["onnx"]["fraction_of_peak"] == pytest.approx(2.0)
    targets = {t["target"].split(" (")[0]: t for t in fake_report["targets"]}
    assert targets["serving overhead"]["met"] is False  # 1.2 > 1.15
    assert targets["ORT FP32 speed-up over PyTorch eager"]["met"] is True
    assert targets["ORT INT8 |delta mAP@0.5|"]["met"] is False


def test_report_files_are_strict_json_markdown_and_png(fake_report, tmp_path):
    written = write_report(fake_report, tmp_path)
    data = json.loads(written["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    per_class = {b["name"]: b for b in data["backends"]}["onnx"]["parity"]["per_class_ap50"]
    assert per_class == {"Effusion": 0.7, "Mass": None}  # NaN (no ground truth) became null
    md = written["md"].read_text()
    assert "| backend | status | size MB | mAP@0.5 | Δ vs PyTorch | p50 ms | p95 ms | images/s |" in md
    assert "## Sweeps" in md and "#### onnx-int8" in md and "Per-class AP@0.5" in md
    if "png" in written:
        assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_joined_table_renders_one_row_per_backend(fake_report):
    lines = joined_table(fake_report).splitlines()
    assert len(lines) == 2 + 5
    assert lines[2].split("|")[1:9] == [" pytorch ", " ok ", " 12.5 ", " 0.5000 ", " +0.0000 ", " 40.0 ", " 40.0 ", " 30.0 "]
    tensorrt = next(line for line in lines if line.startswith("| tensorrt"))
    assert "unavailable (TensorRT FP16 needs an NVIDIA GPU" in tensorrt and tensorrt.count("–") >= 6
    assert "-0.0500" in next(line for line in lines if line.startswith("| onnx-int8"))
    assert "serving overhead" in render_markdown(fake_report)


def test_tensorrt_is_unavailable_with_a_reason_without_gpu(monkeypatch, tmp_path):
    import cxr.export.tensorrt as trt_module

    monkeypatch.setattr(trt_module, "gpu_name", lambda: None)
    b = open_in_process("tensorrt", ckpt=None, checkpoint=tmp_path / "best.pt", repository=tmp_path)
    assert isinstance(b, Unavailable) and b.status == "unavailable"
    assert "NVIDIA GPU" in b.reason


def test_missing_artifact_is_unavailable_with_the_export_command(tmp_path):
    b = open_in_process("onnx-int8", ckpt=None, checkpoint=tmp_path / "best.pt", repository=tmp_path)
    assert isinstance(b, Unavailable) and "cxr export onnx-int8" in b.reason


# --------------------------------------------------------------------- perf_analyzer


def test_perf_analyzer_bytes_round_trip_through_json():
    studies = [b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3, b"DICM\x00\x00" + b"\xff" * 17]
    doc = json.loads(json.dumps(perf_analyzer_data(bytes_entry(s) for s in studies)))
    assert [decode_entry(e) for e in doc["data"]] == studies
    entry = doc["data"][0]["IMAGE_BYTES"]
    assert entry["shape"] == [1]
    raw = base64.b64decode(entry["content"]["b64"])
    assert struct.unpack("<I", raw[:4])[0] == len(studies[0])  # Triton's BYTES element: uint32 LE length + bytes
    assert deserialize_bytes_tensor(raw) == [studies[0]]
    with pytest.raises(ValueError, match="truncated"):
        deserialize_bytes_tensor(raw[:-1])


def test_perf_analyzer_pixels_round_trip(tmp_path):
    film8 = np.arange(64 * 80, dtype=np.uint32).reshape(64, 80).astype(np.uint8)
    film16 = (np.arange(64 * 80).reshape(64, 80) * 13).astype(np.uint16)
    assert np.array_equal(decode_entry(pixels_entry(film8)), film8.astype(np.uint16) * 257)  # same scaling at 16 bits
    assert np.array_equal(decode_entry(pixels_entry(film16)), film16)
    assert pixels_entry(film16)["PIXELS"]["shape"] == [64, 80]
    written = write_perf_data(tmp_path, [b"abc"], [film8])
    assert decode_entry(json.loads(written["bytes"].read_text())["data"][0]) == b"abc"
    assert "--input-data perf_analyzer_data.json" in command_lines()[0]
    assert "--shared-memory=system" in command_lines()[1]


# ------------------------------------------------------------------ the harness, once


@pytest.mark.e2e
def test_bench_quick_end_to_end_on_the_tiny_model(checkpoint, repository, server, synth_data, tmp_path, capsys):
    from cxr.benchmarks.cli import main

    out = tmp_path / "bench"
    rc = main(["--quick", "--checkpoint", str(checkpoint), "--repository", str(repository), "--url", server.url,
               "--data", str(synth_data), "--out", str(out), "--images", "3", "--concurrency", "1,2", "--requests", "3",
               "--seconds", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| backend | status |" in printed
    report = json.loads((out / "report.json").read_text())
    rows = {b["name"]: b for b in report["backends"]}
    assert list(rows) == list(BACKENDS)
    assert rows["onnx-int8"]["status"] == "unavailable"  # the fixture repository has only the FP32 ONNX
    for name in ("pytorch", "onnx", "triton", "triton-shm"):
        assert rows[name]["status"] in ("ok", "failed-parity"), rows[name]
        assert rows[name]["p50_ms"] > 0 and rows[name]["images_per_s"] > 0
        assert rows[name]["map50"] is None or 0.0 <= rows[name]["map50"] <= 1.0
    assert rows["pytorch"]["status"] == "ok" and rows["pytorch"]["delta_map50"] in (0.0, None)
    assert report["serving_overhead"] > 0
    assert {p["concurrency"] for p in report["sweeps"]["triton"]} == {1, 2}
    assert {(p["concurrency"], p["batch"]) for p in report["sweeps"]["onnx"]} == {(1, 1), (2, 1), (1, 4)}
    assert report["config"]["quick"] is True
    assert report["env"]["input_size"] > 0 and "cpu" in report["env"]
    assert not math.isnan(report["model_gflops_per_image"] or 0.0)
    for name in ("report.md", "perf_analyzer_data.json"):
        assert (out / name).is_file()
