"""``cxr viewer fetch`` (set-up) and ``cxr viewer serve PATH...``: results in OHIF, one command."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cxr.errors import MissingFileError, UsageError

PORT = 8042


@dataclass
class Study:
    """What the printed list says about one study: its name, what it holds, the files stored."""

    uid: str
    label: str  # accession number, else patient ID, else the start of the UID
    modalities: list[str] = field(default_factory=list)  # one per file
    files: list[Path] = field(default_factory=list)


def dicom_files(paths: list[Path]) -> list[Path]:
    """Every DICOM Part-10 file named or found (recursively) under ``paths``, by its 'DICM' preamble."""
    found: list[Path] = []
    for path in paths:
        if not path.exists():
            raise MissingFileError(f"{path}: no such file or folder")
        for candidate in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if candidate.is_file():
                with open(candidate, "rb") as f:
                    if f.read(132)[128:] == b"DICM":
                        found.append(candidate)
    if not found:
        raise UsageError(f"no DICOM file (Part 10, 'DICM' at byte 128) in {', '.join(map(str, paths))}: pass the films "
                         "and the folders `cxr predict --sr/--gsps` wrote")
    return found


def studies_of(files: list[Path]) -> list[Study]:
    import pydicom

    studies: dict[str, Study] = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uid = str(ds.StudyInstanceUID)
        label = str(ds.get("AccessionNumber") or ds.get("PatientID") or uid[-12:])
        study = studies.setdefault(uid, Study(uid=uid, label=label))
        study.modalities.append(str(ds.get("Modality", "?")))
        study.files.append(path)
    return list(studies.values())


def cmd_fetch(args: argparse.Namespace) -> int:
    from cxr.client.viewer import ohif

    folder = ohif.fetch(directory=args.cache_dir, source=args.source, force=args.force)
    print(f"OHIF {ohif.VERSION} ({ohif.PACKAGE}, {ohif.INTEGRITY[:22]}...) prepared for {ohif.BASE}/ in {folder}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cxr.client.viewer import ohif
    from cxr.client.viewer.server import ViewerServer

    build = ohif.prepared(args.cache_dir)  # before anything starts: say how to set up
    studies = studies_of(dicom_files(args.paths))
    # A supervisor's SIGTERM stops the viewer like Ctrl-C: Orthanc stopped, the stored copies deleted.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ViewerServer(build, port=args.port, isolate=not args.no_isolation) as server:
            stored = 0
            for study in studies:
                for path in study.files:
                    server.store(path)
                    stored += 1
            _print_urls(server, studies, stored, isolated=not args.no_isolation)
            if args.exit:
                return 0
            while server.process.poll() is None:
                time.sleep(1)
    except KeyboardInterrupt:
        print("\ncxr viewer: stopped; the stored copies are deleted", file=sys.stderr)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"cxr viewer: Orthanc exited with status {server.process.returncode}; see its log above", file=sys.stderr)
    return 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _print_urls(server, studies: list[Study], stored: int, *, isolated: bool) -> None:
    from cxr.client.viewer import ohif

    where = ("loopback only: Orthanc runs in a private network namespace" if isolated else
             f"Orthanc listens on every interface (--no-isolation); it refuses remote clients, but firewall port "
             f"{server.port} on shared machines")
    kinds = Counter(m for study in studies for m in study.modalities)
    print(f"OHIF {ohif.VERSION} over Orthanc at {server.url}{ohif.BASE}/ ({where})")
    print(f"  {stored} object{'s' * (stored != 1)} in {len(studies)} {'study' if len(studies) == 1 else 'studies'}: "
          + ", ".join(f"{n} {m}" for m, n in sorted(kinds.items())))
    print(f"  study list  {server.study_list_url}")
    width = max(len(s.label) for s in studies)
    for study in studies:
        print(f"  {study.label:<{width}}  {server.viewer_url(study.uid)}  {'/'.join(sorted(set(study.modalities)))}")
    print("In a study: open the SR from the study browser (double-click) and answer 'Yes' to track its measurements:")
    print("the findings are then listed by name and score and drawn as boxes. Ctrl-C stops the viewer.")


def add_viewer_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``cxr viewer {fetch,serve}``."""
    p = sub.add_parser("viewer", help="show results in OHIF (a web viewer) over Orthanc, on this machine",
                       description="OHIF 3.13.2 over an Orthanc on 127.0.0.1, with the films and results you pass "
                       "stored in it: the findings of the SR named, scored and boxed, the way radiologists see them. "
                       "Needs Orthanc (apt-get install orthanc orthanc-dicomweb) and, once at set-up, npm.")
    actions = p.add_subparsers(dest="viewer_command", metavar="ACTION", required=True)
    f = actions.add_parser("fetch", help="set-up: fetch the pinned OHIF build (npm pack), verify, prepare, cache",
                           description="Fetch @ohif/app@3.13.2 with `npm pack` (no install), check its SHA-512 against "
                           "the pinned one, prepare it to be served under /ohif/ and keep it in the cache "
                           "($CXR_OHIF_DIR or ~/.cache/cxr-triton/ohif). A verified cache is kept: nothing is fetched "
                           "twice.")
    f.add_argument("--from", dest="source", type=Path, default=None, metavar="TGZ",
                   help="take the tarball from this file (fetched elsewhere with `npm pack @ohif/app@3.13.2`)")
    f.add_argument("--force", action="store_true", help="fetch and prepare again even if the cache is good")
    f.add_argument("--cache-dir", type=Path, default=None, help="the cache (default $CXR_OHIF_DIR or ~/.cache/cxr-triton/ohif)")
    f.set_defaults(func=cmd_fetch)
    s = actions.add_parser("serve", help="store these films and results and serve them in OHIF until Ctrl-C",
                           description="Start Orthanc (DICOMweb + OHIF under /ohif/) on 127.0.0.1:PORT, store every DICOM "
                           "file under PATHs in it (films, SR, GSPS, ...), print the study list and one URL per study, "
                           "and serve until Ctrl-C. Orthanc 1.10 listens on every interface, so it runs in a private "
                           "network namespace (unshare; as root, or with unprivileged user namespaces) reached only "
                           "through 127.0.0.1:PORT. Nothing is fetched: run `cxr viewer fetch` first.")
    s.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="DICOM files or folders (searched recursively)")
    s.add_argument("--port", type=int, default=PORT, help=f"port on 127.0.0.1 (default {PORT})")
    s.add_argument("--no-isolation", action="store_true",
                   help="run Orthanc without a private network namespace, where none can be made: it then listens on "
                   "every interface (refusing remote clients) -- firewall the port")
    s.add_argument("--cache-dir", type=Path, default=None, help="where `cxr viewer fetch` put OHIF")
    s.add_argument("--exit", action="store_true", help="store, print the URLs and stop (to check the set-up)")
    s.set_defaults(func=cmd_serve)
