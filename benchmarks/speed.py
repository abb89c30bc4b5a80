"""Model-only speed of PyTorch eager, ONNX Runtime FP32 and INT8 in one process.

``python -m cxr.benchmarks.speed --checkpoint CKPT --repository DIR [--runs 20]``
prints the median and p90 latency per backend on the same preprocessed input and
the speed-ups over PyTorch.  (The full benchmark with serving and parity is
``cxr bench``, issue 7; this is the export stage's quick check.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def time_backend(fn, x: np.ndarray, *, runs: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn(x)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        samples.append((time.perf_counter() - t0) * 1000)
    a = np.asarray(samples)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "runs": runs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxr.benchmarks.speed", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import torch

    from cxr.export.repository import artifact_path
    from cxr.export.runtime import OrtDetector, TorchDetector
    from cxr.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    s = ckpt.preprocess.size
    x = np.random.default_rng(0).standard_normal((args.batch, ckpt.preprocess.channels, s, s)).astype(np.float32)
    backends = {"pytorch": TorchDetector(ckpt)}
    for kind, name in (("onnx", "onnx"), ("onnx-int8", "onnx-int8")):
        path = artifact_path(args.repository, kind)
        if path.is_file():
            backends[name] = OrtDetector(path)
    results = {"threads": torch.get_num_threads(), "input": list(x.shape)}
    for name, fn in backends.items():
        results[name] = time_backend(fn, x, runs=args.runs)
    base = results["pytorch"]["median_ms"]
    for name in backends:
        results[name]["speedup_vs_pytorch"] = base / results[name]["median_ms"]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"model-only latency, input {tuple(x.shape)}, {args.runs} runs after warm-up, one process")
        for name in backends:
            r = results[name]
            print(f"  {name:<10} median {r['median_ms']:7.1f} ms   p90 {r['p90_ms']:7.1f} ms   x{r['speedup_vs_pytorch']:.2f} vs PyTorch")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
