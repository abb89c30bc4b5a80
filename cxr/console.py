"""What every command prints with: ``--json`` output on stdout (tables and progress go elsewhere)."""

from __future__ import annotations

import json
import sys


def print_json(obj, *, default=None) -> None:
    """``obj`` as indented JSON on stdout, one document per call."""
    json.dump(obj, sys.stdout, indent=2, default=default)
    sys.stdout.write("\n")
