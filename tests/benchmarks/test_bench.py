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
from cxr.benchmarks.report import BACKEND_KEYS, STATUSES, build_report, build_section, write_report
from cxr.benchmarks.report_md import joined_table, render_markdown, summary_table
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


PEAKS = {"fp32": {"gflops": 100.0, "how": "fake"}, "bf16": {"gflops": 200.0, "native": True},
         "int8": {"gflops": 400.0, "native": True, "torch_int_mm": 350.0, "ort_matmul_integer": 400.0}}
VNNI_CPU = {"model": "Fake CPU", "usable_cores": 2, "simd": ["avx2", "avx512f", "avx512_vnni"], "avx512": True, "vnni": True,
            "amx": False}


def _fake_backends():
    def backend(name, precision="fp32"):
        return Backend(name, run=lambda images: [], precision=precision, size_mb=12.5, detail=f"{name} (fake)")

    return [backend("pytorch"), backend("onnx"), backend("onnx-int8", "int8"),
            Unavailable("tensorrt", "TensorRT FP16 needs an NVIDIA GPU and none was found"), backend("triton")]


def _fake_points():
    return {"pytorch": _points("pytorch", [40, 70, 130], [25, 28, 30]), "onnx": _points("onnx", [20, 35, 70], [50, 55, 57]),
            "onnx-int8": _points("onnx-int8", [10, 18, 35], [100, 110, 112]), "triton": _points("triton", [24, 30, 45], [40, 65, 88])}


def _fake_env():
    return {"cpu": VNNI_CPU, "isa": "AVX2 yes, AVX-512 yes, VNNI yes, BF16 no, AMX no", "load_average": [0.1, 0.2, 0.3],
            "gpu": None, "libraries": {"torch": "2.x", "tensorrt": None}}


@pytest.fixture
def fake_report():
    parity = {"pytorch": _parity("pytorch"), "onnx": _parity("onnx"), "onnx-int8": _parity("onnx-int8", False, 0.45, -0.05),
              "triton": _parity("triton")}
    trained = build_section(model={"name": "cpu-demo@128", "arch": "fasterrcnn_mobilenet_v3_large_fpn", "size": 128,
                                   "trained": True, "source": "checkpoint fake.pt"},
                            backends=_fake_backends(), points=_fake_points(), parity=parity, flops=2e9, peaks=PEAKS,
                            images="4 fake studies", cpu=VNNI_CPU)
    untrained = build_section(model={"name": "fasterrcnn_resnet50_fpn@512", "arch": "fasterrcnn_resnet50_fpn", "size": 512,
                                     "trained": False, "source": "untrained: deterministic weights"},
                              backends=_fake_backends(), points=_fake_points(), parity=None, flops=100e9, peaks=PEAKS,
                              images="4 fake studies", cpu=VNNI_CPU)
    return build_report(env=_fake_env(), sections=[trained, untrained], peaks=PEAKS, config={"quick": True})


def test_report_schema_has_every_backend_key_and_status(fake_report):
    section = fake_report["models"][0]
    assert [b["name"] for b in section["backends"]] == ["pytorch", "onnx", "onnx-int8", "tensorrt", "triton"]
    for row in section["backends"]:
        assert set(BACKEND_KEYS) <= set(row)
        assert row["status"] in STATUSES
    rows = {b["name"]: b for b in section["backends"]}
    assert rows["tensorrt"]["status"] == "unavailable" and "GPU" in rows["tensorrt"]["reason"]
    assert rows["onnx-int8"]["status"] == "failed-parity" and "match rate" in rows["onnx-int8"]["reason"]
    assert rows["onnx"]["status"] == "ok" and rows["onnx"]["reason"] is None
    assert section["serving_overhead"] == pytest.approx(24 / 20)
    assert section["serving"]["overhead_ms"] == pytest.approx(4.0)  # Triton p50 24 ms - ORT p50 20 ms
    assert rows["onnx"]["speedup_vs_pytorch"] == pytest.approx(2.0)
    assert rows["onnx"]["p50_ms"] == pytest.approx(20.0) and rows["onnx"]["images_per_s"] == 57  # best of the sweep
    assert rows["onnx"]["achieved_gflops"] == pytest.approx(2e9 / 0.010 / 1e9)  # model-only 10 ms/image
    assert rows["onnx"]["fraction_of_peak"] == pytest.approx(2.0)  # of the FP32 peak (100)
    # INT8 is divided by the INT8 peak, not the FP32 one: 2 GFLOP in 5 ms = 400 GOP/s = 100 % of 400.
    assert rows["onnx-int8"]["peak"] == {"precision": "int8", "gflops": 400.0}
    assert rows["onnx-int8"]["fraction_of_peak"] == pytest.approx(1.0)
    targets = {t["target"].split(" (")[0]: t for t in section["targets"]}
    assert targets["serving overhead at concurrency 1"]["met"] is False  # 4 ms > 2 ms on the small model
    assert targets["ORT FP32 speed-up over PyTorch eager"]["met"] is True
    assert targets["ORT INT8 |delta mAP@0.5|"]["met"] is False
    # onnx-int8 failed parity, so no low-precision path counts for the speed target
    low = next(t for t in section["targets"] if t["target"].startswith("best low-precision"))
    assert low["value"] is None and low["need"] == ">= 2.0 (VNNI)"


def test_untrained_rows_say_untrained_and_have_no_parity(fake_report):
    section = fake_report["models"][1]
    rows = {b["name"]: b for b in section["backends"]}
    assert rows["onnx"]["accuracy"] == "untrained" and rows["onnx"]["map50"] is None and "parity" not in rows["onnx"]
    assert rows["tensorrt"]["accuracy"] is None  # unavailable rows say why, not "untrained"
    targets = {t["target"].split(" (")[0]: t for t in section["targets"]}
    assert targets["serving overhead at concurrency 1"]["need"] == "<= 1.03"  # the seed's model: a ratio
    assert targets["INT8 parity"]["value"] == "untrained" and targets["INT8 parity"]["met"] is None
    low = next(t for t in section["targets"] if t["target"].startswith("best low-precision"))
    assert low["value"] == pytest.approx(10 / 5) and low["met"] is True  # model-only 10 ms / 5 ms, no parity to fail
    table = joined_table(section)
    onnx = next(line for line in table.splitlines() if line.startswith("| onnx |"))
    assert onnx.count("untrained") == 2  # mAP and delta columns
    assert "| fasterrcnn_resnet50_fpn@512 | onnx | 20.0 |" in summary_table(fake_report)


def test_report_files_are_strict_json_markdown_and_png(fake_report, tmp_path):
    written = write_report(fake_report, tmp_path)
    data = json.loads(written["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert data["schema"] == "cxr-bench/2" and data["env"]["gemm_peaks"]["int8"]["gflops"] == 400.0
    per_class = {b["name"]: b for b in data["models"][0]["backends"]}["onnx"]["parity"]["per_class_ap50"]
    assert per_class == {"Effusion": 0.7, "Mass": None}  # NaN (no ground truth) became null
    md = written["md"].read_text()
    assert "| backend | status | size MB | mAP@0.5 | Δ vs PyTorch | p50 ms | p95 ms | images/s | model ms |" in md
    assert "**ISA: AVX2 yes, AVX-512 yes, VNNI yes, BF16 no, AMX no**" in md and "INT8 GOP/s | 400" in md
    assert "provisional" not in md  # load 0.1 on 2 cores: nothing else ran
    busy = {**fake_report, "env": {**fake_report["env"], "load_average": [1.8, 1.0, 0.5]}}
    assert "other work was running: the figures are provisional" in render_markdown(busy)
    assert "## cpu-demo@128 (trained)" in md and "## fasterrcnn_resnet50_fpn@512 (untrained)" in md
    assert "### Sweeps" in md and "#### onnx-int8" in md and "Per-class AP@0.5" in md
    if "png" in written:
        assert written["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_joined_table_renders_one_row_per_backend(fake_report):
    section = fake_report["models"][0]
    lines = joined_table(section).splitlines()
    assert len(lines) == 2 + 5
    assert lines[2].split("|")[1:12] == [" pytorch ", " ok ", " 12.5 ", " 0.5000 ", " +0.0000 ", " 40.0 ", " 40.0 ", " 30.0 ",
                                         " 20.0 ", " 100 ", " 100% fp32 "]
    tensorrt = next(line for line in lines if line.startswith("| tensorrt"))
    assert "unavailable (TensorRT FP16 needs an NVIDIA GPU" in tensorrt and tensorrt.count("–") >= 6
    assert "-0.0500" in next(line for line in lines if line.startswith("| onnx-int8"))
    assert "serving overhead at concurrency 1" in render_markdown(fake_report)


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
    from cxr.benchmarks.backends import DEFAULT_BACKENDS
    from cxr.benchmarks.cli import main

    out = tmp_path / "bench"
    rc = main(["--quick", "--checkpoint", str(checkpoint), "--repository", str(repository), "--url", server.url,
               "--data", str(synth_data), "--out", str(out), "--images", "3", "--concurrency", "1,2", "--requests", "3",
               "--seconds", "1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| backend | status |" in printed and "ISA: " in printed
    report = json.loads((out / "report.json").read_text())
    (section,) = report["models"]
    assert section["trained"] is True and section["size"] == 128
    rows = {b["name"]: b for b in section["backends"]}
    assert list(rows) == list(DEFAULT_BACKENDS)
    assert rows["onnx-int8"]["status"] == "unavailable"  # the fixture repository has only the FP32 ONNX
    for name in ("pytorch", "onnx", "triton", "triton-shm"):
        assert rows[name]["status"] in ("ok", "failed-parity"), rows[name]
        assert rows[name]["p50_ms"] > 0 and rows[name]["images_per_s"] > 0
        assert rows[name]["map50"] is None or 0.0 <= rows[name]["map50"] <= 1.0
        assert rows[name]["peak"]["precision"] == "fp32" and rows[name]["fraction_of_peak"] > 0
    assert rows["pytorch"]["status"] == "ok" and rows["pytorch"]["delta_map50"] in (0.0, None)
    assert section["serving_overhead"] > 0 and section["serving"]["overhead_ms"] is not None
    assert set(section["serving"]["steps"]) == {"cxr_detector", "preprocess", "detector", "postprocess"}
    assert {p["concurrency"] for p in section["sweeps"]["triton"]} == {1, 2}
    assert {(p["concurrency"], p["batch"]) for p in section["sweeps"]["onnx"]} == {(1, 1), (2, 1), (1, 4)}
    assert report["config"]["quick"] is True
    assert report["env"]["isa"].startswith("AVX2 ") and report["env"]["gemm_peaks"]["fp32"]["gflops"] > 0
    assert not math.isnan(section["model_gflops_per_image"] or 0.0)
    for name in ("report.md", "perf_analyzer_data.json"):
        assert (out / name).is_file()


@pytest.mark.e2e
def test_bench_untrained_arch_exports_its_own_artifacts_and_says_untrained(tmp_path):
    """--arch without a checkpoint: deterministic weights, FP32 and full-INT8 ONNX in OUT/models/, no parity."""
    from cxr.benchmarks.cli import main

    out = tmp_path / "bench"
    argv = ["latency", "--quick", "--arch", "cpu-demo@64", "--backends", "onnx,onnx-int8", "--out", str(out),
            "--images", "2", "--concurrency", "1", "--batches", "1", "--requests", "2", "--seconds", "1"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    (section,) = report["models"]
    assert (section["name"], section["trained"], section["size"]) == ("cpu-demo@64", False, 64)
    assert "deterministic weights" in section["source"]
    rows = {b["name"]: b for b in section["backends"]}
    assert rows["onnx"]["status"] == rows["onnx-int8"]["status"] == "ok"
    assert rows["onnx"]["accuracy"] == "untrained" and rows["onnx-int8"]["precision"] == "int8"
    assert section["artifacts"]["onnx"] == "exported" and section["artifacts"]["onnx-int8"]["op_types"] == "all"
    from cxr.training.config import PRESETS

    repo = out / "models" / f"{PRESETS['cpu-demo']['arch']}@64" / "model_repository"
    assert (repo / "detector/1/model.int8.onnx").is_file()
    assert "untrained" in (out / "report.md").read_text()
    # A second run reuses the artifacts of the same deterministic weights instead of exporting again.
    assert main(argv) == 0
    assert json.loads((out / "report.json").read_text())["models"][0]["artifacts"] == {"onnx": "reused", "onnx-int8": "reused"}


@pytest.mark.e2e
def test_triton_per_step_split_from_the_live_server(server, synth_data):
    """TritonStats on real statistics: every model of the ensemble, counts equal to the requests sent."""
    from cxr.benchmarks.backends import STAT_KEYS, TritonStats
    from cxr.client import DetectorClient

    studies = sorted((synth_data / "images").glob("*.png"))[:2]
    import time

    stats = TritonStats(server.url)
    try:
        stats.begin()
        with DetectorClient(url=server.url, timeout_s=60, retries=0) as client:
            for path in studies:
                client.predict(path.read_bytes())
        # Triton records a request's statistics when it releases the request, which may be just
        # after the client has its response: wait (bounded) until every model has counted both.
        deadline = time.monotonic() + 10
        while True:
            model_ms, extra = stats.end()
            done = len(extra.get("steps", {})) == 4 and all(s["requests"] >= len(studies) for s in extra["steps"].values())
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        stats.close()
    steps = extra["steps"]
    assert set(steps) == {"cxr_detector", "preprocess", "detector", "postprocess"}
    for name, s in steps.items():
        assert s["requests"] == len(studies), (name, s)
        assert s["request_ms"] > 0 and s["overhead_ms"] >= 0
        if name != "cxr_detector":  # an ensemble's "compute" sums its steps' times, queues included: it may exceed
            parts = sum(s[f"{k}_ms"] for k in STAT_KEYS[1:])  # its request time (perf_analyzer prints the same)
            assert parts <= s["request_ms"] + 1e-6, (name, s)
    assert steps["detector"]["compute_infer_ms"] > 0 and model_ms == pytest.approx(steps["detector"]["infer_ms_per_image"])
    # The ensemble's server time holds its steps' (they run inside it).
    assert steps["cxr_detector"]["request_ms"] >= steps["detector"]["compute_infer_ms"]


def test_triton_throughput_is_compared_with_ort_on_the_same_file_not_a_faster_runtime():
    def pts(name, conc_rate):
        out = []
        for c, rate in conc_rate:
            s = summarize([Sample(0.0, 0.05)], backend=name, concurrency=c, batch=1)
            s.images_per_s = rate
            out.append(s)
        return out

    backends = [Backend(n, run=lambda images: [], precision="fp32", size_mb=1.0) for n in ("onnx", "openvino", "triton")]
    points = {"onnx": pts("onnx", [(1, 40.0), (4, 50.0)]), "openvino": pts("openvino", [(1, 90.0), (4, 100.0)]),
              "triton": pts("triton", [(1, 30.0), (4, 60.0)])}
    section = build_section(model={"name": "m", "arch": "fasterrcnn_resnet50_fpn", "size": 512, "trained": False},
                            backends=backends, points=points, parity=None, flops=None, peaks=PEAKS, images="x", cpu=VNNI_CPU)
    target = next(t for t in section["targets"] if t["target"].startswith("Triton images/s at concurrency 4"))
    assert target["value"] == pytest.approx(60 / 50) and target["met"] is True
