"""`cxr bench train-speed`: FP32 and BF16 training images/s measured in one run (benchmarks/train_speed.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cxr.machine import cpu_info, isa_line

CXR = str(Path(sys.executable).with_name("cxr"))  # the console script installed beside this interpreter


def test_train_speed_reports_both_precisions_and_their_ratio(synth_data, imagenet_weights):
    out = subprocess.run([CXR, "bench", "train-speed", "--data", str(synth_data),
                          "--iterations", "1", "--rounds", "1", "--warmup", "0", "--json"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["preset"] == "cpu-demo" and result["isa"] == isa_line(cpu_info())
    rates = result["images_per_s"]
    assert set(rates) == {"fp32", "bf16"} and all(len(v["rounds"]) == 1 and v["median"] > 0 for v in rates.values())
    assert result["ratio_to_fp32"]["fp32"] == 1.0
    assert abs(result["ratio_to_fp32"]["bf16"] - rates["bf16"]["median"] / rates["fp32"]["median"]) < 1e-9


def test_train_speed_names_a_missing_data_folder(tmp_path):
    out = subprocess.run([CXR, "bench", "train-speed", "--data", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "nope" in out.stderr and "Traceback" not in out.stderr
