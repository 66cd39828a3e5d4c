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

from cpoly.report.cli import main
from cpoly.report.curves import DEFAULT_CURVE_X, check_curve_key, curve_keys, curve_points, curve_table
from cpoly.report.docs import DOCS_TABLE, docs_files, render_docs_table, rewrite_docs
from cpoly.report.groups import (
    Comparison,
    GroupSummary,
    baseline_choices,
    compare,
    pair,
    sections,
    summarise,
    task_names,
)
from cpoly.report.plots import (
    NO_ALLOCATION,
    allocation_panels,
    log_x_axis,
    plot_curves,
    plot_group_dendrograms,
    plot_groups,
)
from cpoly.report.runs import (
    BOOKKEEPING_KEYS,
    METHOD_DERIVED_KEYS,
    METHOD_KEY_PREFIX,
    RUN_COLUMNS,
    SPLITS,
    TRANSFER_KEY_PREFIXES,
    WHICH,
    ReportError,
    differing_keys,
    find_results,
    flatten_config,
    format_value,
    group_name,
    is_bookkeeping,
    is_method_key,
    load_runs,
    read_config,
    read_runs_csv,
    run_config,
    runs_csv,
    runs_frame,
)
from cpoly.report.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, TESTS, mean_ci, paired_test
from cpoly.report.tables import csv_table, markdown_table

__all__ = [
    "BOOKKEEPING_KEYS",
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CONFIDENCE",
    "DEFAULT_CURVE_X",
    "DOCS_TABLE",
    "METHOD_DERIVED_KEYS",
    "METHOD_KEY_PREFIX",
    "NO_ALLOCATION",
    "RUN_COLUMNS",
    "SPLITS",
    "TESTS",
    "TRANSFER_KEY_PREFIXES",
    "WHICH",
    "Comparison",
    "GroupSummary",
    "ReportError",
    "allocation_panels",
    "baseline_choices",
    "check_curve_key",
    "compare",
    "csv_table",
    "curve_keys",
    "curve_points",
    "curve_table",
    "differing_keys",
    "docs_files",
    "find_results",
    "flatten_config",
    "format_value",
    "group_name",
    "is_bookkeeping",
    "is_method_key",
    "load_runs",
    "log_x_axis",
    "main",
    "markdown_table",
    "mean_ci",
    "paired_test",
    "pair",
    "plot_curves",
    "plot_group_dendrograms",
    "plot_groups",
    "read_config",
    "read_runs_csv",
    "render_docs_table",
    "rewrite_docs",
    "run_config",
    "runs_csv",
    "runs_frame",
    "sections",
    "summarise",
    "task_names",
]
