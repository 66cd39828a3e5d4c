"""The results tables in README.md and docs/*.md: each sits between two marker lines, the opening one
holding the report's arguments; `python -m cpoly.report --docs` rewrites them, `--check` compares."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from cpoly.report.runs import ReportError

# The report's command line, `main(argv) -> exit status` (cpoly.report.cli.main: passed in, which keeps
# this module below the command line that offers --docs).
Main = Callable[[Sequence[str]], int]

# A results table in README.md or docs/*.md sits between these lines; the opening one holds the report's
# arguments (paths relative to the repository root), e.g.
#   <!-- report: docs/results/methods9.csv --metric exact_match --no-per-task --baseline cpoly -->
#   ...the table, written by `python -m cpoly.report --docs`...
#   <!-- /report -->
DOCS_TABLE = re.compile(r"(?P<open><!-- report: (?P<args>[^\n]*?) -->\n)(?P<body>.*?)(?P<close><!-- /report -->)", re.S)


def docs_files(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def render_docs_table(args: str, root: Path, main: Main) -> str:
    """The table a marker's arguments give, as `python -m cpoly.report <args> --no-titles` prints it, run
    from the repository root (no figure is written)."""
    argv = shlex.split(args)
    refused = ("--plot", "--curve", "--dendrogram", "--docs", "--format", "--check", "--root")
    if any(a.split("=")[0] in refused for a in argv):
        raise ReportError(f"report: {args}: a docs table takes table arguments only (no figures, --format or --docs)")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(root), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--no-titles"])
    if code != 0:
        raise ReportError(f"report: {args}: {err.getvalue().strip() or f'exit {code}'}")
    return out.getvalue().rstrip("\n") + "\n"


def rewrite_docs(root: Path, main: Main, check: bool = False) -> list[str]:
    """Rewrite every results table of README.md and docs/*.md from the files its marker names; with `check`,
    write nothing. Returns the tables that differ(ed), as `file:line (report: args)`."""
    changed = []
    for path in docs_files(root):
        text = path.read_text(encoding="utf-8")
        pieces, position = [], 0
        for match in DOCS_TABLE.finditer(text):
            body = render_docs_table(match["args"], root, main)
            if body != match["body"]:
                line = text.count("\n", 0, match.start()) + 1
                changed.append(f"{path.relative_to(root)}:{line} (report: {match['args']})")
            pieces += [text[position : match.start("body")], body]
            position = match.end("body")
        new = "".join(pieces) + text[position:]
        if not check and new != text:
            path.write_text(new, encoding="utf-8")
    return changed
