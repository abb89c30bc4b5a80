"""``cxr bench soak``: a bounded soak of the served ``cxr_detector`` ensemble.

``concurrency`` closed-loop workers send ``requests`` studies (real PNG/DICOM bytes,
cycled) through one :class:`cxr.client.DetectorClient` with retries off, so every
failure counts.  ``warmup`` requests go first and are not recorded.  Each recorded
request keeps its start, latency and status (:class:`Outcome`).  The figures:

- windows: the requests in completion order split into ``windows`` equal parts, each
  with p50/p99 latency (successful requests) and throughput = requests completed in
  the window / time from the previous window's last completion to its own;
- p99 stability: p99 of the pooled latencies of the last third of the windows over
  that of the first third, the first window left out as warm-up (:func:`p99_stability`);
- server memory: the resident set summed over the tritonserver process and all its
  descendants (the Python backend stubs are child processes), sampled every
  ``rss_interval`` s (:mod:`cxr.benchmarks.procmem`); start (after warm-up), end,
  peak, drift, the least-squares slope in MB per 1000 requests (robust to the noise
  of a single end sample), and start/end per process.

The pure functions (:func:`split_windows`, :func:`window_stats`, :func:`p99_stability`)
take hand-made numbers in tests; :func:`drive` takes any ``predict`` callable.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxr.benchmarks.load import OK, Call, run_load
from cxr.benchmarks.procmem import MB, RssSampler, listener_pid, rss_summary
from cxr.benchmarks.stats import percentile_ms
from cxr.decode.header import STUDY_SUFFIXES
from cxr.errors import InvalidOptionError, MissingFileError
from cxr.server.net import is_loopback


@dataclass(frozen=True)
class SoakConfig:
    """One soak run, filled from ``cxr bench soak`` by ``cxr.benchmarks.cli.soak_config``."""

    out: Path
    requests: int = 2000  # recorded requests; with 10 windows, 200 per window: a p99 from 2 tail samples
    concurrency: int = 8  # about what a PACS gateway with a few modalities keeps in flight
    warmup: int = 16  # ORT arenas and the stubs' first allocations, before the RSS baseline
    windows: int = 10
    url: str | None = None  # None: start the embedded server on `repository` for the run
    repository: Path | None = None
    data: Path | None = None  # None: synthesise PNG + DICOM studies
    images: int = 32  # distinct studies in the cycle
    server_pid: int | None = None  # whose process tree to measure with --url; None: the local listener, if any
    rss_interval: float = 0.5
    timeout: float = 60.0  # per request; generous: a slow answer is a latency figure, not a failure
    seconds: float | None = None  # optional wall-clock cap on the recorded phase
    max_p99_ratio: float | None = None  # gates; None = off
    max_rss_drift_mb: float | None = None
    progress: bool = True
    server_timeout: float = 180.0

    def __post_init__(self) -> None:
        if self.requests < 1 or self.concurrency < 1 or self.warmup < 0 or self.windows < 1 or self.images < 1:
            raise InvalidOptionError("soak needs --requests, --concurrency, --windows, --images >= 1 and --warmup >= 0; "
                             f"got {self.requests}, {self.concurrency}, {self.windows}, {self.images}, {self.warmup}")
        if self.rss_interval <= 0 or self.timeout <= 0 or (self.seconds is not None and self.seconds <= 0):
            raise InvalidOptionError("--rss-interval, --timeout and --seconds must be positive")
        if self.url is None and self.repository is None:
            raise InvalidOptionError("soak needs --model-repository DIR (start the embedded server) or --url HOST:PORT")


# ------------------------------------------------------------------------- the maths


# One recorded request (start, end since the recorded phase began, ok, status): the
# load driver's record, under the name the soak's maths and reports use.
Outcome = Call


def split_windows(outcomes: Sequence[Outcome], n: int) -> list[list[Outcome]]:
    """``outcomes`` in completion order, split into ``min(n, len)`` parts of (nearly) equal size."""
    ordered = sorted(outcomes, key=lambda o: o.end)
    n = min(n, len(ordered))
    return [list(part) for part in np.array_split(np.array(ordered, dtype=object), n)] if n else []


def window_stats(windows: Sequence[Sequence[Outcome]]) -> list[dict]:
    """Per window: requests, errors, p50/p99 ms of the successful ones, requests/s, span in s."""
    rows, previous_end = [], 0.0
    for i, w in enumerate(windows):
        lat = [o.latency_s for o in w if o.ok]
        end = w[-1].end
        span = end - previous_end
        rows.append({"window": i, "requests": len(w), "errors": sum(not o.ok for o in w),
                     "p50_ms": percentile_ms(lat, 50), "p99_ms": percentile_ms(lat, 99),
                     "requests_per_s": len(w) / span if span > 0 else None, "start_s": previous_end, "end_s": end})
        previous_end = end
    return rows


def p99_stability(windows: Sequence[Sequence[Outcome]], *, warmup_windows: int = 1) -> dict:
    """p99 of the last third of the windows over p99 of the first third (after ``warmup_windows``).

    Pooling a third of the run gives each p99 enough tail samples to compare; one
    window's p99 rests on a couple of requests.  ``ratio`` is None with a ``reason``
    when there are too few windows.
    """
    usable = list(windows[warmup_windows:])
    span = len(usable) // 3
    if span < 1:
        return {"ratio": None, "reason": f"{len(windows)} windows: need at least {warmup_windows + 3} to compare"}
    first, last = usable[:span], usable[-span:]

    def pooled(ws):
        return percentile_ms([o.latency_s for w in ws for o in w if o.ok], 99)

    p_first, p_last = pooled(first), pooled(last)
    return {"first_windows": [warmup_windows, warmup_windows + span - 1],
            "last_windows": [len(windows) - span, len(windows) - 1],
            "p99_first_ms": p_first, "p99_last_ms": p_last,
            "ratio": p_last / p_first if p_first and p_last is not None else None}


# ---------------------------------------------------------------------- load driver


def drive(predict: Callable[[bytes], object], studies: Sequence[bytes], *, requests: int, concurrency: int,
          seconds: float | None = None, clock: Callable[[], float] = time.perf_counter,
          on_done: Callable[[Outcome], None] | None = None) -> tuple[list[Outcome], dict[str, str]]:
    """Send ``requests`` studies (cycled), one per call, with ``concurrency`` closed-loop workers.

    Returns the outcomes (times relative to the first start) and the first message per
    failure status.  A call that raises is a failed :class:`Outcome`, never re-raised.
    """
    run = run_load(lambda batch: predict(batch[0]), studies, requests=requests, concurrency=concurrency,
                   seconds=seconds, clock=clock, on_done=on_done, name="soak")
    return run.calls, run.messages


def load_studies(data: Path | None, n: int) -> tuple[list[bytes], str]:
    """Up to ``n`` study files of ``data`` (PNG and DICOM interleaved), or ``n`` synthetic ones."""
    if data is None:
        from cxr.benchmarks.inputs import UNSEEN_SEED
        from cxr.training.synth import SynthConfig, generate

        with tempfile.TemporaryDirectory(prefix="cxr-soak-") as tmp:
            generate(Path(tmp) / "data", SynthConfig(images=max(2, (n + 1) // 2), seed=UNSEEN_SEED, size=512, dicom=True),
                     progress=False)
            studies, _ = load_studies(Path(tmp) / "data", n)
        return studies, f"{len(studies)} synthetic studies (512 px PNG + DICOM, seed {UNSEEN_SEED}; no --data given)"
    data = Path(data)
    if not data.is_dir():
        raise MissingFileError(f"--data {data}: not a folder")
    # NIH layout (cxr synth): the films, not preview.png
    roots = [d for d in (data / "images", data / "dicom") if d.is_dir()] or [data]
    by_kind: dict[str, list[Path]] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in STUDY_SUFFIXES and p.is_file():
                by_kind.setdefault(p.suffix.lower(), []).append(p)
    lists = list(by_kind.values())
    paths = [lst[i] for i in range(max(map(len, lists), default=0)) for lst in lists if i < len(lst)][:n]
    if not paths:
        raise MissingFileError(f"--data {data}: no {'/'.join(STUDY_SUFFIXES)} files")
    kinds = Counter(p.suffix.lower().lstrip(".") for p in paths)
    return [p.read_bytes() for p in paths], f"{len(paths)} studies of {data} ({', '.join(f'{v} {k}' for k, v in kinds.items())})"


# --------------------------------------------------------------------------- the run


def gate_failures(report: dict, cfg: SoakConfig) -> list[str]:
    """Why the soak failed, one line each; empty when it passed."""
    reasons = []
    r = report["requests"]
    if r["failed"]:
        by = ", ".join(f"{k} x{v}" for k, v in r["errors_by_status"].items())
        reasons.append(f"{r['failed']} of {r['sent']} requests failed ({by}); first: {next(iter(r['first_errors'].values()), '')}")
    ratio = report["p99_stability"].get("ratio")
    if cfg.max_p99_ratio is not None and (ratio is None or ratio > cfg.max_p99_ratio):
        reasons.append(f"p99 ratio last/first {ratio if ratio is None else format(ratio, '.2f')} > --max-p99-ratio {cfg.max_p99_ratio}")
    rss = report["rss"]
    if cfg.max_rss_drift_mb is not None:
        if not rss.get("measured"):
            reasons.append(f"--max-rss-drift-mb given but server RSS was not measured ({rss.get('reason')})")
        elif rss["drift_mb"] > cfg.max_rss_drift_mb:
            reasons.append(f"server RSS drift {rss['drift_mb']:+.1f} MB > --max-rss-drift-mb {cfg.max_rss_drift_mb}")
    return reasons


def _measured_pid(cfg: SoakConfig, url: str, embedded_pid: int | None) -> tuple[int | None, str]:
    """(pid whose process tree's RSS is sampled, where it came from), or (None, why not).

    Only a loopback ``url`` (:func:`cxr.server.net.is_loopback`) is looked up among this
    host's listeners: any other address may be another machine, whose port numbers say
    nothing about the processes here.
    """
    if embedded_pid is not None:
        return embedded_pid, "embedded tritonserver"
    if cfg.server_pid is not None:
        return cfg.server_pid, "--server-pid"
    host, _, port = url.rpartition(":")
    if is_loopback(host) and port.isdigit():
        pid = listener_pid(int(port))
        if pid is not None:
            return pid, f"local listener on port {port}"
        return None, f"no visible local process listens on port {port}; pass --server-pid"
    return None, f"{host} is not a loopback address; pass --server-pid when the server runs on this host"


def run_soak(cfg: SoakConfig) -> dict:
    """Run the soak described by ``cfg`` and return its report (:func:`write_soak` writes it).

    Only the embedded server's log goes to ``cfg.out`` here.  Outcome times and RSS
    sample times share one origin up to the few ms the baseline sample takes.
    """
    import contextlib

    from tqdm import tqdm

    from cxr.client import DetectorClient

    studies, source = load_studies(cfg.data, cfg.images)
    cfg.out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        url, embedded = cfg.url, None
        if url is None:
            from cxr.server.launcher import TritonServer

            server = stack.enter_context(  # stopped on every exit path
                TritonServer.on_free_ports(cfg.repository, log_file=cfg.out / "tritonserver.log"))
            url, embedded = server.url, server.process.pid
        pid, pid_source = _measured_pid(cfg, url, embedded)
        client = stack.enter_context(DetectorClient(url=url, timeout_s=cfg.timeout, retries=0))  # count, never hide
        load = os.getloadavg()
        warm, warm_messages = drive(client.predict, studies, requests=cfg.warmup, concurrency=cfg.concurrency)
        bar = stack.enter_context(tqdm(total=cfg.requests, desc="soak", unit="req", dynamic_ncols=True,
                                       disable=not cfg.progress or not os.isatty(2)))
        done = [0]

        def on_done(o: Outcome) -> None:
            done[0] += 1
            bar.update(1)

        clock_t0 = time.perf_counter()
        sampler = RssSampler(pid, lambda: done[0], lambda: time.perf_counter() - clock_t0, cfg.rss_interval) if pid else None
        with sampler or contextlib.nullcontext():
            outcomes, messages = drive(client.predict, studies, requests=cfg.requests, concurrency=cfg.concurrency,
                                       seconds=cfg.seconds, on_done=on_done)
    windows = split_windows(outcomes, cfg.windows)
    rows = window_stats(windows)
    for row in rows:  # server memory when each window closed
        near = [s for s in (sampler.samples if sampler else []) if s.t <= row["end_s"] + cfg.rss_interval]
        row["rss_mb"] = near[-1].rss_bytes / MB if near else None
    lat = [o.latency_s for o in outcomes if o.ok]
    wall = max((o.end for o in outcomes), default=0.0)
    failed = [o for o in outcomes + warm if not o.ok]
    rss = rss_summary(sampler.samples if sampler else [])
    if rss["measured"]:
        rss.update(pid=pid, pid_source=pid_source, by_process=sampler.by_process())
        # Allocator arenas grow most in the first minutes: the same figures after window 0,
        # the part of the run the p99 comparison uses too.
        steady = rss_summary([x for x in sampler.samples if rows and x.t >= rows[0]["end_s"]])
        rss["after_window0"] = {k: steady.get(k) for k in ("start_mb", "drift_mb", "drift_pct", "slope_mb_per_1000_requests")}
    else:
        rss["reason"] = pid_source if pid is None else f"process {pid} ({pid_source}) not found in /proc"
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "url": url, "server": "embedded" if embedded else "--url", "studies": source,
        "host": {"cpus": os.cpu_count(), "loadavg_start": list(load), "loadavg_end": list(os.getloadavg())},
        "requests": {"sent": len(outcomes) + len(warm), "recorded": len(outcomes), "warmup": len(warm),
                     "ok": len(outcomes) - sum(not o.ok for o in outcomes), "failed": len(failed),
                     "errors_by_status": dict(Counter(o.status for o in failed)),
                     "first_errors": {**warm_messages, **messages}},
        "latency": {"p50_ms": percentile_ms(lat, 50), "p95_ms": percentile_ms(lat, 95), "p99_ms": percentile_ms(lat, 99),
                    "max_ms": max(lat) * 1000.0 if lat else None},
        "wall_s": wall, "requests_per_s": len(outcomes) / wall if wall > 0 else None,
        "windows": rows, "p99_stability": p99_stability(windows), "rss": rss,
        "samples": {"start_s": [o.start for o in outcomes], "latency_ms": [o.latency_s * 1000.0 for o in outcomes],
                    "status": [o.status for o in outcomes]},
        "rss_samples": [asdict(s) for s in (sampler.samples if sampler else [])],
    }


# ------------------------------------------------------------------------- rendering


def soak_table(report: dict) -> str:
    """Per-window table plus the headline lines."""
    from cxr.benchmarks.report_md import _f

    lines = ["| window | requests | errors | p50 ms | p99 ms | req/s | server RSS MB |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for w in report["windows"]:
        lines.append(f"| {w['window']} | {w['requests']} | {w['errors']} | {_f(w['p50_ms'])} | {_f(w['p99_ms'])} | "
                     f"{_f(w['requests_per_s'])} | {_f(w['rss_mb'])} |")
    r, lat, st, rss = report["requests"], report["latency"], report["p99_stability"], report["rss"]
    lines += ["", f"requests: {r['sent']} sent ({r['warmup']} warm-up), {r['failed']} failed"
              + (f" {r['errors_by_status']}" if r["failed"] else ""),
              f"latency: p50 {_f(lat['p50_ms'])} ms, p95 {_f(lat['p95_ms'])} ms, p99 {_f(lat['p99_ms'])} ms, "
              f"max {_f(lat['max_ms'])} ms; {_f(report['requests_per_s'])} req/s over {report['wall_s']:.1f} s"]
    if st["ratio"] is None:
        lines.append(f"p99 stability: not computed ({st.get('reason', 'no successful requests')})")
    else:
        lines.append(f"p99 stability: windows {st['first_windows'][0]}-{st['first_windows'][1]} {_f(st['p99_first_ms'])} ms, "
                     f"windows {st['last_windows'][0]}-{st['last_windows'][1]} {_f(st['p99_last_ms'])} ms, "
                     f"ratio {st['ratio']:.2f}")
    if rss.get("measured"):
        pct = "" if rss["drift_pct"] is None else f" ({rss['drift_pct']:+.1f}%)"
        lines.append(f"server RSS ({rss['processes']} processes, pid {rss['pid']}, {rss['pid_source']}): start "
                     f"{rss['start_mb']:.1f} MB, end {rss['end_mb']:.1f} MB, peak {rss['peak_mb']:.1f} MB, drift "
                     f"{rss['drift_mb']:+.1f} MB{pct}, slope {_f(rss['slope_mb_per_1000_requests'], '+.2f')} MB/1000 requests")
        w0 = rss.get("after_window0") or {}
        if w0.get("drift_mb") is not None:
            lines.append(f"  after window 0: {w0['start_mb']:.1f} MB, drift {w0['drift_mb']:+.1f} MB, slope "
                         f"{_f(w0['slope_mb_per_1000_requests'], '+.2f')} MB/1000 requests")
        lines.append("  by process: " + ", ".join(f"{p['name']} {_f(p['end_mb'])} MB ({_f(p['drift_mb'], '+.1f')})"
                                                   for p in rss["by_process"]))
    else:
        lines.append(f"server RSS: not measured ({rss.get('reason')})")
    host = report["host"]
    lines.append(f"host: {host['cpus']} CPUs, load average {host['loadavg_start'][0]:.2f} at start, "
                 f"{host['loadavg_end'][0]:.2f} at end")
    return "\n".join(lines)


def soak_plot(report: dict, path: Path) -> Path | None:
    """Latency over time with p50/p99 per window, and server RSS over time; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    s = report["samples"]
    end = np.array(s["start_s"]) + np.array(s["latency_ms"]) / 1000.0
    ok = np.array([st == OK for st in s["status"]], dtype=bool)
    lat = np.array(s["latency_ms"])
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(8, 6), dpi=110, sharex=True, height_ratios=(2, 1))
    ax.scatter(end[ok], lat[ok], s=3, alpha=0.3, color="0.5", label="request")
    if (~ok).any():
        ax.scatter(end[~ok], lat[~ok], s=14, marker="x", color="red", label="failed")
    for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
        xs, ys = [], []
        for w in report["windows"]:
            if w[key] is not None:
                xs += [w["start_s"], w["end_s"]]
                ys += [w[key], w[key]]
        ax.plot(xs, ys, style, color="C0" if key == "p50_ms" else "C3", label=f"{key[:3]} per window")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper left")
    c = report["config"]
    ax.set_title(f"soak: {report['requests']['recorded']} requests at concurrency {c['concurrency']}, "
                 f"{report['requests']['failed']} failed", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    rs = report["rss_samples"]
    if rs:
        bx.plot([r["t"] for r in rs], [r["rss_bytes"] / MB for r in rs], color="C2")
        bx.set_title(f"server RSS drift {report['rss']['drift_mb']:+.1f} MB", fontsize=8)
    else:
        bx.text(0.5, 0.5, "server RSS not measured", ha="center", va="center", transform=bx.transAxes)
    bx.set_ylabel("server RSS (MB)")
    bx.set_xlabel("time since the recorded phase began (s)")
    bx.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_soak(report: dict, out: Path) -> dict[str, Path]:
    """soak.json and soak.png in ``out``; returns what was written."""
    from cxr.benchmarks.report import write_json

    out.mkdir(parents=True, exist_ok=True)
    written = {"json": write_json(report, out / "soak.json")}
    png = soak_plot(report, out / "soak.png")
    if png is not None:
        written["png"] = png
    return written
