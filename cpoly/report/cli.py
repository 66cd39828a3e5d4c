"""`python -m cpoly.report`: the command line (its usage is the package docstring, `help(cpoly.report)`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cpoly.report
from cpoly.report.curves import DEFAULT_CURVE_X, check_curve_key, curve_table
from cpoly.report.docs import rewrite_docs
from cpoly.report.groups import compare, summarise
from cpoly.report.plots import NO_ALLOCATION, allocation_panels, plot_curves, plot_group_dendrograms, plot_groups
from cpoly.report.runs import SPLITS, WHICH, ReportError, load_runs, runs_csv, stderr
from cpoly.report.stats import TESTS
from cpoly.report.tables import csv_table, markdown_table


def docs_command(root: Path, check: bool) -> int:
    try:
        changed = rewrite_docs(root, main, check)
    except ReportError as error:
        stderr(str(error))
        return 2
    for table in changed:
        stderr(f"{'differs from its results' if check else 'rewrote'}: {table}")
    if check and changed:
        stderr(f"{len(changed)} table(s) differ from the committed results: run python -m cpoly.report --docs")
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(
        prog="python -m cpoly.report",
        description=cpoly.report.__doc__.split("\n\n")[0],
        epilog="See the module docstring (python -c 'import cpoly.report; help(cpoly.report)') for grouping rules.",
    )
    out.add_argument(
        "dirs", nargs="*", help="run folders, multirun folders, results.json files or per-run CSV files (--format csv)"
    )
    out.add_argument("--metric", help="the metric to report (default: each run's main_metric)")
    out.add_argument(
        "--split",
        choices=list(SPLITS),
        default="test",
        help="the split's scores: test (default) or dev (the selecting one)",
    )
    out.add_argument(
        "--which",
        choices=list(WHICH),
        default="final",
        help="final: the last step's adapters (default); best: best/'s, the step chosen on the dev split",
    )
    out.add_argument(
        "--format",
        choices=["markdown", "csv", "summary-csv"],
        default="markdown",
        help="markdown tables (default); csv: one row per run (as docs/results/ holds); summary-csv: a row per group",
    )
    out.add_argument(
        "--titles", action=argparse.BooleanOptionalAction, default=True, help="section titles (default on)"
    )
    out.add_argument(
        "--docs",
        action="store_true",
        help="rewrite every results table of README.md and docs/*.md from what its <!-- report: ... --> marker names",
    )
    out.add_argument(
        "--check", action="store_true", help="with --docs: write nothing, exit 1 naming each table that differs"
    )
    out.add_argument("--root", type=Path, default=Path.cwd(), help="with --docs: the repository root (default: here)")
    out.add_argument(
        "--per-task", action=argparse.BooleanOptionalAction, default=True, help="per-task columns (default on)"
    )
    _comparison_and_figure_arguments(out)
    return out


def _comparison_and_figure_arguments(out: argparse.ArgumentParser) -> None:
    out.add_argument(
        "--baseline",
        metavar="METHOD_OR_LABEL",
        help="compare every group with this method's (or this labelled) group, paired by seed",
    )
    out.add_argument("--test", choices=list(TESTS), default="ttest", help="the paired test (default ttest)")
    out.add_argument("--plot", type=Path, help="write a bar chart (mean, 95%% CI error bars) to this PNG")
    out.add_argument("--curve", type=Path, help="write the metric against --x, one line per method, to this PNG")
    out.add_argument(
        "--curve-table", action="store_true", help="print --x's curve table instead of the group table (no figure)"
    )
    out.add_argument("--x", default=DEFAULT_CURVE_X, help=f"--curve's x axis config key (default {DEFAULT_CURVE_X})")
    out.add_argument("--dendrogram", type=Path, help="write task dendrograms of the learned allocations to this PNG")


def main(argv: Sequence[str] | None = None) -> int:
    command_line = parser()
    args = command_line.parse_args(argv)
    if args.docs:
        return docs_command(args.root, args.check)
    if not args.dirs:
        command_line.error("give run folders or per-run CSV files (or --docs)")
    try:
        runs = load_runs(args.dirs)
    except ReportError as error:
        stderr(str(error))
        return 2
    if not runs:
        stderr(f"no finished results.json below {', '.join(args.dirs)}")
        return 1
    if args.format == "csv":
        sys.stdout.write(runs_csv(runs))
        return 0
    return _report(args, runs)


def _report(args: argparse.Namespace, runs: list[dict]) -> int:
    """The group tables, comparisons, curves and figures of the loaded runs, as the arguments ask."""
    groups = summarise(runs, metric=args.metric, which=args.which, split=args.split)
    try:  # every check of the arguments before anything is printed or written
        comparisons = compare(groups, args.baseline, args.test) if args.baseline else None
        if args.curve or args.curve_table:
            check_curve_key(groups, args.x)
            curves = curve_table(groups, args.x, titles=args.titles)
        if args.dendrogram and not allocation_panels(groups):
            raise ReportError(NO_ALLOCATION)
    except ReportError as error:
        stderr(str(error))
        return 2
    if args.curve_table:
        sys.stdout.write(curves)
        return 0
    table = markdown_table if args.format == "markdown" else csv_table
    sys.stdout.write(table(groups, per_task=args.per_task, comparisons=comparisons, titles=args.titles))
    if args.curve:
        if args.format == "markdown":
            sys.stdout.write("\n" + curves)
        else:
            sys.stderr.write(curves)
        stderr(f"wrote {plot_curves(groups, args.curve, args.x)}")
    if args.plot:
        stderr(f"wrote {plot_groups(groups, args.plot)}")
    if args.dendrogram:
        stderr(f"wrote {plot_group_dendrograms(groups, args.dendrogram)}")
    return 0
