"""Tables, paired comparisons and figures of results from run folders, without the W&B API.

    python -m cpoly.report <dir> [<dir> ...] [--metric NAME] [--which final|best]
                           [--format markdown|csv] [--per-task | --no-per-task]
                           [--baseline METHOD_OR_LABEL] [--test ttest|bootstrap]
                           [--plot bars.png] [--curve curve.png] [--x CONFIG_KEY] [--dendrogram tree.png]

Every `results.json` at or below the given folders (or given directly) is one run; unfinished runs are
skipped with a note on stderr.

Groups. Runs are grouped by their group name (the run name without the seed) *and* by the values of every
config key that differs between the loaded runs, read from the `config_resolved.yaml` beside each
`results.json` (else from `results["config"]`, else the group name alone). Per-run bookkeeping keys
(`BOOKKEEPING_KEYS`: seed, run name, paths, logger, ...) never split groups; a key missing from a config
counts as null (configs written before the key existed). A group's label is its group name plus
`key=value` for the differing keys that the group name does not already determine (those with more than
one value among the runs of that name), e.g. `synthetic-strings_t5-cpoly-a3b1r2 optim.lr=0.001`. Groups
are split into sections by (benchmark, metric); only groups within one section are compared.

Statistics. Each group row has n (seeds with the metric), the mean ± sample standard deviation over
seeds of the macro-averaged metric, the Student-t 95% confidence interval of the mean (scipy.stats.t;
n/a for n = 1), skill recovery (synthetic benchmark), trainable parameters and per-task means.

Flags:
  dirs                  run folders, multirun folders or results.json files
  --metric NAME         the metric to report (default: each run's main_metric)
  --which final|best    the final or the best checkpoint's scores (default final)
  --format markdown|csv markdown tables (default) or one CSV table on stdout; the CSV has the statistics
                        (n, mean, std, ci_low, ci_high), the comparison (baseline, diff_mean, diff_std,
                        diff_ci_low, diff_ci_high, p_value, n_pairs, test; empty without --baseline) and
                        a `config:<key>` column per key shown in the labels
  --per-task / --no-per-task
                        per-task columns (default on)
  --baseline M          compare every group with a baseline, paired by seed (seeds present in both). M is
                        a group label (that one group is the baseline of every group in its section), or a
                        method or group name: then each group is paired with the group of that method that
                        has the same backbone and the same values of every differing key except the
                        method's own (`method.*`, METHOD_DERIVED_KEYS, and `init_from` and `transfer.*`:
                        a transfer variant is part of its arm); none or several: n/a, and why.
                        Prints a "vs M" table per section: pairs, mean and std of the differences
                        (group - baseline), their 95% CI and a two-sided p-value; n/a with < 2 pairs
  --test ttest|bootstrap
                        the paired test: Student t (scipy.stats.ttest_rel, default) or a paired bootstrap
                        of the mean difference (scipy.stats.bootstrap(paired=True), 10,000 resamples,
                        numpy Generator(0); percentile CI; p = 2 min(P(d <= 0), P(d >= 0)) over the
                        bootstrap distribution, at most 1)
  --plot PATH           a PNG of horizontal bars, one per group: the mean with its 95% CI as error bars
  --curve PATH          a PNG sample-efficiency figure: the metric against the --x config key, one line
                        per group label without the x key, mean over seeds with a ± 1 std band, log x
                        axis when x spans more than 8x; one panel per section. Its table (rows = lines,
                        columns = x values, cells `mean ± std (n)`) is printed too: on stdout after the
                        tables, on stderr with --format csv
  --x KEY               the config key of --curve's x axis (default benchmark.n_train_per_task)
  --dendrogram PATH     a PNG of task dendrograms (cpoly.logging.dendrogram), one panel per group whose
                        runs record a learned allocation (`results["allocation"]["shared"]`), from the
                        group's lowest seed (named in the panel title)

Exit status: 0; 1 when no finished run was found; 2 for bad arguments (an unknown --baseline or --x, no
allocation to draw), with one line on stderr naming the value and the choices."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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
        description=__doc__.split("\n\n")[0],
        epilog="Grouping rules: the module docstring (python -c 'import cpoly.report.cli; help(cpoly.report.cli)').",
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
