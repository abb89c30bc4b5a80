"""The ``cxr`` command line's front door: one entry point, the subcommand table, logging and the error policy.

Each wing owns its commands and their parsers (``training/cli.py``, ``export/cli.py``,
``client/cli.py``, ``benchmarks/cli.py``, ``cxr/server/cli.py``); this module only
registers them.  Heavy imports (torch, tritonclient, ...) happen inside the command that
needs them, so ``cxr --help`` and the client commands work on a PACS host without torch.
Every command exits non-zero on failure with a one-line reason on stderr: 2 for what the
user can fix (:class:`~cxr.errors.UsageError`, :class:`~cxr.errors.InvalidImageError`, a
study or option the server refused), 1 for a failure of the system (a server that is down
or answered INTERNAL: an :class:`~cxr.errors.ExplainedError` the user cannot fix) and for a
bug in cxr (its traceback with ``-v``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from cxr import __version__
from cxr.benchmarks.cli import add_bench_parser
from cxr.client.cli import add_commands as add_client_commands
from cxr.errors import ExplainedError, InvalidImageError
from cxr.export.cli import add_commands as add_export_commands
from cxr.server.cli import add_commands as add_server_commands
from cxr.training.cli import add_commands as add_training_commands

log = logging.getLogger("cxr")

# The subcommand table, in the order of the pipeline (and of `cxr --help`):
# synth, data, train, evaluate, weights | export | serve | predict, pacs | bench.
COMMANDS = (add_training_commands, add_export_commands, add_server_commands, add_client_commands, add_bench_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr",
        description="Chest X-ray abnormality detection: data, training, export, Triton serving, PACS client, benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"cxr-triton {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _configure_logging(verbose: int) -> None:
    """0: cxr at INFO, others WARNING; -v: cxr at DEBUG (and bug tracebacks); -vv: everything at DEBUG."""
    level = logging.DEBUG if verbose >= 2 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Third-party INFO chatter (attribute copies, quantizer internals: onnxruntime's quantizer
    # logs on the root logger) hides our lines; -vv shows it.
    logging.getLogger().setLevel(level)
    logging.getLogger("cxr").setLevel(logging.DEBUG if verbose >= 1 else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("cxr: interrupted", file=sys.stderr)
        return 130
    except (ExplainedError, InvalidImageError) as exc:
        # They carry their own explanation: one line, no traceback.  Who has to act decides the status.
        log.debug("failed", exc_info=True)
        if isinstance(exc, InvalidImageError) or exc.user_can_fix:
            print(f"cxr {args.command}: error: {exc}", file=sys.stderr)
            return 2
        print(f"cxr {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - anything else is a bug in cxr: say so, traceback with -v
        if args.verbose:
            traceback.print_exc()
        hint = "" if args.verbose else " (run with -v for the traceback)"
        print(f"cxr {args.command}: internal error: {type(exc).__name__}: {exc}{hint}; please report it as a bug",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
