"""Sizes a reader can hold in their head (STYLE.md: "Files stay under ~400 lines; split by
concept"): no product file over 400 lines, no function over 80.

Every ``.py`` file of the product folders is scanned, whatever its name -- no allow-list,
so a new file is held to the limits the day it appears.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("cxr", "training", "export", "client", "benchmarks", "model_repository")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80  # from the ``def`` line to the last line of the body, docstring included


def product_files() -> list[Path]:
    return sorted(path for folder in PRODUCT for path in (ROOT / folder).rglob("*.py"))


def oversized(name: str, text: str) -> list[str]:
    """What in one file's ``text`` breaks a limit, one line each, naming ``name`` and the line."""
    found = []
    lines = len(text.splitlines())
    if lines > MAX_FILE_LINES:
        found.append(f"{name}: {lines} lines (limit {MAX_FILE_LINES})")
    for node in ast.walk(ast.parse(text, filename=name)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}(): {length} lines (limit {MAX_FUNCTION_LINES})")
    return found


def test_no_product_file_over_400_lines_and_no_function_over_80():
    files = product_files()
    assert {f.relative_to(ROOT).parts[0] for f in files} == set(PRODUCT), "a product folder was not scanned"
    problems = [problem for f in files for problem in oversized(str(f.relative_to(ROOT)), f.read_text(encoding="utf-8"))]
    assert not problems, "split these by concept:\n" + "\n".join(problems)


def _function(body_lines: int, *, asynchronous: bool = False) -> str:
    body = "".join(f"    x{i} = {i}\n" for i in range(body_lines))
    return f"{'async ' if asynchronous else ''}def f():\n{body}"


def test_the_scan_finds_a_long_file_and_long_functions_nested_or_async():
    assert oversized("ok.py", _function(79)) == []  # 80 lines: at the limit
    assert oversized("f.py", _function(80)) == ["f.py:1 f(): 81 lines (limit 80)"]
    assert oversized("a.py", _function(80, asynchronous=True)) == ["a.py:1 f(): 81 lines (limit 80)"]
    method = "class C:\n" + "".join(f"    {line}\n" for line in _function(80).splitlines())
    assert oversized("m.py", method) == ["m.py:2 f(): 81 lines (limit 80)"]
    assert oversized("ok.py", "x = 0\n" * 400) == []
    assert oversized("big.py", "x = 0\n" * 401) == ["big.py: 401 lines (limit 400)"]


MAX_FRONT_PAGE_LINES = 300  # the README is a front page: what it is, first commands, status, links; manuals sit beside their wings


def test_the_readme_front_page_stays_a_front_page():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines < MAX_FRONT_PAGE_LINES, f"README.md has {lines} lines (limit {MAX_FRONT_PAGE_LINES}): move detail to a wing's README"
