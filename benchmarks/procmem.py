"""Resident memory of a process tree, from ``/proc`` (Linux; no psutil).

:func:`tree_rss` sums ``VmRSS`` over a process and all its descendants, found through
``/proc/<pid>/task/*/children`` (or, on kernels without it, the parent pid in
``/proc/*/stat``).  :class:`RssSampler` samples it on a thread while a load runs and
:func:`rss_summary` turns the samples into start/end/peak, drift and slopes.
:func:`listener_pid` finds the local process behind a listening TCP port, so a
server given only as ``--url 127.0.0.1:PORT`` can be measured too.

Summed RSS counts pages shared between the processes (libraries, the Python backend's
shared-memory region) once per process: the level is an upper bound, the drift is
what matters.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MB = 1024.0 * 1024.0


@dataclass(frozen=True)
class RssSample:
    """Server memory at ``t`` s since the recorded phase began, after ``completed`` requests."""

    t: float
    rss_bytes: int
    completed: int
    processes: int


def rss_summary(samples: Sequence[RssSample]) -> dict:
    """Start/end/peak MB, drift MB and %, slope in MB per 1000 requests (least squares) and per minute."""
    if not samples:
        return {"measured": False}
    mb = np.array([s.rss_bytes / MB for s in samples])
    start, end = float(mb[0]), float(mb[-1])
    done = np.array([s.completed for s in samples], dtype=np.float64)
    t = np.array([s.t for s in samples])
    slope_req = float(np.polyfit(done, mb, 1)[0]) * 1000.0 if np.ptp(done) > 0 else None
    slope_min = float(np.polyfit(t, mb, 1)[0]) * 60.0 if np.ptp(t) > 0 else None
    return {"measured": True, "samples": len(samples), "start_mb": start, "end_mb": end, "peak_mb": float(mb.max()),
            "drift_mb": end - start, "drift_pct": (end - start) / start * 100.0 if start > 0 else None,
            "slope_mb_per_1000_requests": slope_req, "slope_mb_per_min": slope_min,
            "processes": max(s.processes for s in samples)}


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's ``children`` list; a ppid scan where the kernel has none)."""
    kids: list[int] = []
    tasks = Path(f"/proc/{pid}/task")
    files = list(tasks.glob("*/children")) if tasks.is_dir() else []
    if files:
        for f in files:
            try:
                kids += [int(k) for k in f.read_text().split()]
            except OSError:  # the thread exited meanwhile
                pass
        return kids
    return _children_by_ppid(pid)


def _children_by_ppid(pid: int) -> list[int]:
    """Direct children of ``pid`` by their parent pid in ``/proc/*/stat`` (slower; any kernel)."""
    kids: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        if Path(f"/proc/{p}").is_dir() and p not in tree:
            tree.append(p)
            todo += _children(p)
    return tree


def _vm_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:  # exited between listing and reading
        pass
    return 0  # also kernel threads and zombies, which have no VmRSS


def tree_rss(pid: int) -> tuple[int, int]:
    """(resident bytes summed over ``pid`` and its descendants, number of processes)."""
    tree = process_tree(pid)
    if not tree:
        raise ProcessLookupError(f"no process {pid} (or /proc is not readable)")
    return sum(_vm_rss(p) for p in tree), len(tree)


def process_name(pid: int) -> str:
    """``comm``, or the model name for a Triton Python backend stub (its argv[1] is ``.../MODEL/1/model.py``)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    if comm.startswith("triton_python") and len(argv) > 1 and argv[1].endswith(b"model.py"):
        return f"{Path(argv[1].decode(errors='replace')).parent.parent.name} stub"
    return comm


def tree_breakdown(pid: int) -> dict[int, tuple[str, int]]:
    """{pid: (name, resident bytes)} over ``pid`` and its descendants."""
    return {p: (process_name(p), _vm_rss(p)) for p in process_tree(pid)}


def listener_pid(port: int) -> int | None:
    """The local process listening on TCP ``port`` (from /proc/net/tcp*), or None when not visible."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(f"socket:[{f[9]}]")
    for fd_dir in Path("/proc").glob("[0-9]*/fd") if inodes else ():
        try:
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                return int(fd_dir.parent.name)
        except OSError:  # another user's process, or gone
            continue
    return None


class RssSampler:
    """Samples :func:`tree_rss` of ``pid`` every ``interval`` s on a daemon thread."""

    def __init__(self, pid: int, completed: Callable[[], int], clock: Callable[[], float], interval: float = 0.5) -> None:
        self.pid, self.completed, self.clock, self.interval = pid, completed, clock, interval
        self.samples: list[RssSample] = []
        self.first: dict[int, tuple[str, int]] = {}  # per process, at the baseline and at the end
        self.last: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-rss", daemon=True)

    def sample(self) -> None:
        try:
            rss, n = tree_rss(self.pid)
        except ProcessLookupError:
            return  # the server died: the failed requests tell that story
        self.samples.append(RssSample(self.clock(), rss, self.completed(), n))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self.sample()  # the baseline, after warm-up
        self.first = tree_breakdown(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the end, after the last request
        self.last = tree_breakdown(self.pid)

    def by_process(self) -> list[dict]:
        """Start/end MB per process (a process that came or went has None on that side)."""
        rows = []
        for p in sorted(set(self.first) | set(self.last)):
            name = (self.last.get(p) or self.first[p])[0]
            a, b = (None if d.get(p) is None else d[p][1] / MB for d in (self.first, self.last))
            rows.append({"pid": p, "name": name, "start_mb": a, "end_mb": b,
                         "drift_mb": b - a if a is not None and b is not None else None})
        return rows
