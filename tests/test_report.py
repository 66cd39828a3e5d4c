"""`python -m cpoly.report`: finding results, grouping by config, mean ± std and CIs, paired comparisons with
a baseline, tables, the bar chart, the sample-efficiency curve and dendrograms."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from scipy import stats

from cpoly.logging import write_results
from cpoly.report import (
    allocation_panels,
    compare,
    csv_table,
    curve_table,
    find_results,
    load_runs,
    log_x_axis,
    main,
    markdown_table,
    paired_test,
    summarise,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def results(
    method: str,
    seed: int,
    task_scores: dict[str, float],
    *,
    best_offset: float = 5.0,
    benchmark: str = "synthetic",
    trainable: int = 100,
    status: str = "finished",
) -> dict:
    """A results.json as the training loop writes it, with the main metric `char_similarity`."""
    group = f"{benchmark}-tiny_t5-{method}"

    def scores(offset: float) -> dict:
        per_task = {t: {"exact_match": v / 2 + offset, "char_similarity": v + offset} for t, v in task_scores.items()}
        avg = {m: sum(s[m] for s in per_task.values()) / len(per_task) for m in ("exact_match", "char_similarity")}
        return {"step": 300, "per_task": per_task, "avg": avg}

    return {
        "run_name": f"{group}-s{seed}",
        "group": group,
        "seed": seed,
        "benchmark": benchmark,
        "backbone": "tiny_t5",
        "method": method,
        "metric": benchmark,
        "main_metric": "char_similarity",
        "dev": {"final": scores(-1.0), "best": scores(best_offset - 1.0)},
        "test": {"final": scores(0.0), "best": scores(best_offset)},
        "selection": {"split": "dev", "metric": "dev/avg/char_similarity", "rule": "max", "step": 300, "value": 0.0},
        "skill_recovery": 0.5 if method == "cpoly" else None,
        "parameters": {
            "shared_skills": 60,
            "task_skills": 30,
            "router": 10,
            "heads": 0,
            "trainable": trainable,
            "total": 10_000,
        },
        "steps": 300,
        "wall_time_s": 80.0,
        "git_sha": "abc123",
        "status": status,
        "benchmark_info": {},
        "paths": {"predictions": "predictions.jsonl"},
    }


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """A Hydra-style multirun folder: cpoly with three seeds, poly with two, one failed run."""
    root = tmp_path / "multirun" / "2026-01-01" / "12-00-00"
    scores = {
        ("cpoly", 1): {"task_00": 80.0, "task_01": 60.0},  # avg 70
        ("cpoly", 2): {"task_00": 84.0, "task_01": 62.0},  # avg 73
        ("cpoly", 3): {"task_00": 88.0, "task_01": 64.0},  # avg 76
        ("poly", 1): {"task_00": 50.0, "task_01": 50.0},  # avg 50
        ("poly", 2): {"task_00": 54.0, "task_01": 50.0},  # avg 52
    }
    for i, ((method, seed), task_scores) in enumerate(scores.items()):
        write_results(root / str(i) / "results.json", results(method, seed, task_scores, trainable=90))
    write_results(root / "9" / "results.json", results("mhr", 1, {"task_00": 1.0}, status="failed"))
    # The temporary folder of an atomic checkpoint write is not a run.
    write_results(root / "0" / ".best.tmp" / "results.json", results("cpoly", 7, {"task_00": 0.0}))
    return tmp_path / "multirun"


def test_find_results_skips_hidden_folders_and_duplicates(multirun: Path) -> None:
    found = find_results([multirun, multirun / "2026-01-01" / "12-00-00" / "0"])
    assert len(found) == 6
    assert not any(".best.tmp" in str(p) for p in found)


def test_summarise_groups_seeds_and_computes_mean_and_std(multirun: Path) -> None:
    warnings: list[str] = []
    runs = load_runs([multirun], warn=warnings.append)
    assert len(runs) == 5 and any("failed" in w for w in warnings)
    groups = summarise(runs, warn=warnings.append)
    assert [g.method for g in groups] == ["poly", "cpoly"]  # the paper's method order
    poly, cpoly = groups
    assert sorted(cpoly.seeds) == [1, 2, 3] and sorted(poly.seeds) == [1, 2]
    assert cpoly.metric == "char_similarity" and cpoly.which == "final"
    assert cpoly.mean == pytest.approx(73.0)
    assert cpoly.std == pytest.approx(3.0)  # sample std of 70, 73, 76: sqrt((9 + 0 + 9) / 2)
    assert poly.mean == pytest.approx(51.0) and poly.std == pytest.approx(math.sqrt(2.0))
    assert cpoly.task_mean("task_00") == pytest.approx(84.0) and cpoly.task_mean("task_01") == pytest.approx(62.0)
    assert cpoly.skill_recovery == [0.5, 0.5, 0.5] and poly.skill_recovery == []

    best = summarise(runs, which="best")[1]
    assert best.mean == pytest.approx(78.0)
    exact = summarise(runs, metric="exact_match")[1]
    assert exact.metric == "exact_match" and exact.mean == pytest.approx(36.5)


def test_single_seed_has_no_std_and_duplicate_seeds_are_reported(tmp_path: Path) -> None:
    run = results("task_lora", 1, {"task_00": 10.0})
    warnings: list[str] = []
    (group,) = summarise([run], warn=warnings.append)
    assert group.mean == 10.0 and math.isnan(group.std)
    assert "| 10.00 |" in markdown_table([group])
    summarise([run, run], warn=warnings.append)
    assert any("seed 1 appears more than once" in w for w in warnings)


def test_group_falls_back_to_the_run_name_without_the_seed() -> None:
    a, b = results("poly", 1, {"t": 1.0}), results("poly", 2, {"t": 3.0})
    del a["group"], b["group"]
    (group,) = summarise([a, b])
    assert group.group == "synthetic-tiny_t5-poly" and group.mean == 2.0


def test_markdown_table(multirun: Path) -> None:
    text = markdown_table(summarise(load_runs([multirun], warn=lambda m: None)))
    lines = text.splitlines()
    assert lines[0] == "## synthetic: char_similarity, test split, final adapters (mean ± std over seeds)"
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[:5] == ["group", "backbone", "method", "seeds", "char_similarity (test, final)"]
    assert header[-2:] == ["task_00", "task_01"] and "trainable params" in header
    cpoly_row = next(line for line in lines if "| cpoly |" in line)
    assert "| 3 | 73.00 ± 3.00 |" in cpoly_row and "| 84.00 | 62.00 |" in cpoly_row
    assert "| 0.500 ± 0.000 |" in cpoly_row  # skill recovery


def test_csv_table_and_sections_per_benchmark(multirun: Path) -> None:
    runs = load_runs([multirun], warn=lambda m: None)
    runs.append(results("cpoly", 1, {"boolq": 70.0}, benchmark="superglue"))
    groups = summarise(runs)
    rows = list(csv.DictReader(io.StringIO(csv_table(groups))))
    assert [r["group"] for r in rows] == [
        "superglue-tiny_t5-cpoly",
        "synthetic-tiny_t5-poly",
        "synthetic-tiny_t5-cpoly",
    ]
    cpoly = rows[2]
    assert cpoly["n_seeds"] == "3" and float(cpoly["mean"]) == 73.0 and float(cpoly["std"]) == 3.0
    assert cpoly["task:task_00"] == "84" and cpoly["task:boolq"] == "" and cpoly["trainable"] == "90"
    assert markdown_table(groups).count("## ") == 2


def test_cli_prints_a_table_and_plots(multirun: Path, tmp_path: Path, capsys) -> None:
    plot = tmp_path / "groups.png"
    assert main([str(multirun), "--plot", str(plot), "--no-per-task"]) == 0
    out = capsys.readouterr().out
    assert "synthetic-tiny_t5-cpoly" in out and "task_00" not in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path / "nowhere")]) == 1


def test_python_dash_m_entry_point(multirun: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cpoly.report", str(multirun), "--format", "summary-csv", "--which", "best"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("group,benchmark,backbone,method")
    assert "synthetic-tiny_t5-cpoly,synthetic,tiny_t5,cpoly,char_similarity,test,best,3" in done.stdout


# ------------------------------------------------------------------------ config-aware groups and statistics


def config(method: str, seed: int, **overrides) -> dict:
    """A config_resolved.yaml in the real one's shape (nested groups, bookkeeping keys), small."""
    group = f"synthetic-tiny_t5-{method}"
    cfg = {
        "task_name": "train",
        "seed": seed,
        "resume": "auto",
        "group": group,
        "run_name": f"{group}-s{seed}",
        "tags": [],
        "backbone": {"name": "tiny_t5", "target_modules": ["q", "v"]},
        "method": {"name": method, "method": method, "rank": 2, "n_skills": 4 if method != "shared_lora" else 1},
        "benchmark": {"name": "synthetic", "n_train_per_task": 400, "main_metric": "char_similarity"},
        "optim": {"name": "adamw", "lr": 0.003, "router_lr": 0.1 if method != "shared_lora" else None},
        "trainer": {"max_steps": 300, "progress_bar": seed % 2 == 0, "cpu_threads": seed, "log_every": 10},
        "logger": {"name": "none", "group": group},
        "paths": {"output_dir": f"/somewhere/{group}-s{seed}-{overrides}"},
    }
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg


def write_run(root: Path, method: str, seed: int, avg: float, *, allocation=None, **overrides) -> Path:
    """A run folder with results.json (average metric `avg` over two tasks) and config_resolved.yaml."""
    folder = root / f"{method}-s{seed}-{'-'.join(f'{k}={v}' for k, v in overrides.items())}"
    folder.mkdir(parents=True)
    run = results(method, seed, {"task_00": avg - 1.0, "task_01": avg + 1.0})
    run["allocation"] = allocation
    (folder / "results.json").write_text(json.dumps(run))
    (folder / "config_resolved.yaml").write_text(yaml.safe_dump(config(method, seed, **overrides)))
    return folder


def quiet(root: Path, **kwargs):
    return summarise(load_runs([root], warn=lambda m: None), warn=lambda m: None, **kwargs)


def test_runs_differing_only_in_lr_form_two_groups_and_bookkeeping_never_splits(tmp_path: Path) -> None:
    for seed, (slow, fast) in enumerate([(70.0, 80.0), (73.0, 82.0), (76.0, 84.0)], start=1):
        write_run(tmp_path, "cpoly", seed, slow, optim__lr=0.001)
        write_run(tmp_path, "cpoly", seed, fast, optim__lr=0.003)
        write_run(tmp_path, "poly", seed, 50.0 + seed)
    groups = quiet(tmp_path)
    # seed, run_name, paths.*, logger.*, trainer.progress_bar / cpu_threads differ between every run
    assert [g.label for g in groups] == [
        "synthetic-tiny_t5-poly",  # its name determines its one lr: not shown
        "synthetic-tiny_t5-cpoly optim.lr=0.001",
        "synthetic-tiny_t5-cpoly optim.lr=0.003",
    ]
    poly, slow, fast = groups
    assert slow.group == fast.group == "synthetic-tiny_t5-cpoly"
    assert sorted(slow.seeds) == [1, 2, 3] and slow.mean == pytest.approx(73.0)
    assert fast.mean == pytest.approx(82.0) and poly.mean == pytest.approx(52.0)
    text = markdown_table(groups)
    assert "| synthetic-tiny_t5-cpoly optim.lr=0.001 | tiny_t5 | cpoly | 3 | 73.00 ± 3.00 |" in text
    rows = list(csv.DictReader(io.StringIO(csv_table(groups))))
    assert [r["config:optim.lr"] for r in rows] == ["0.003", "0.001", "0.003"]
    assert [r["group"] for r in rows] == ["synthetic-tiny_t5-poly"] + ["synthetic-tiny_t5-cpoly"] * 2


def test_the_config_falls_back_to_results_then_to_the_group_name() -> None:
    a, b, c = (results("cpoly", s, {"t": v}) for s, v in [(1, 1.0), (2, 3.0), (1, 10.0)])
    a["config"] = {"seed": 1, "optim": {"lr": 0.001}}
    b["config"] = {"seed": 2, "optim": {"lr": 0.001}}
    c["config"] = {"seed": 1, "optim": {"lr": 0.01}}
    groups = summarise([a, b, c], warn=lambda m: None)
    assert [(g.label, g.mean) for g in groups] == [
        ("synthetic-tiny_t5-cpoly optim.lr=0.001", 2.0),
        ("synthetic-tiny_t5-cpoly optim.lr=0.01", 10.0),
    ]
    for run in (a, b, c):
        del run["config"]
    (merged,) = summarise([a, b, c], warn=lambda m: None)
    assert merged.label == "synthetic-tiny_t5-cpoly" and len(merged.values) == 3


def test_confidence_interval_is_student_t_and_na_for_one_seed(tmp_path: Path) -> None:
    values = [70.0, 73.0, 77.0, 71.0]
    for seed, value in enumerate(values, start=1):
        write_run(tmp_path, "cpoly", seed, value)
    write_run(tmp_path, "poly", 1, 40.0)
    poly, cpoly = quiet(tmp_path)
    half = stats.t.ppf(0.975, 3) * statistics.stdev(values) / math.sqrt(4)
    assert cpoly.ci == pytest.approx((statistics.fmean(values) - half, statistics.fmean(values) + half))
    assert half == pytest.approx(3.1824 * 3.0957 / 2, abs=1e-3)  # by hand: t(0.975, 3), sqrt(28.75 / 3), sqrt(4)
    assert all(math.isnan(v) for v in poly.ci)
    lines = markdown_table([poly, cpoly]).splitlines()
    assert "| 4 | 72.75 ± 3.10 | [67.82, 77.68] |" in next(line for line in lines if "| cpoly |" in line)
    assert "| 1 | 40.00 | n/a |" in next(line for line in lines if "| poly |" in line)
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(csv_table([poly, cpoly])))}
    assert float(rows["cpoly"]["ci_low"]) == pytest.approx(72.75 - half, rel=1e-5)
    assert rows["cpoly"]["n"] == "4" and rows["poly"]["ci_low"] == rows["poly"]["ci_high"] == ""


def test_paired_t_test_uses_only_the_common_seeds(tmp_path: Path) -> None:
    cpoly = {1: 70.0, 2: 75.0, 3: 71.0, 4: 99.0}
    poly = {1: 60.0, 2: 61.0, 3: 65.0, 5: 10.0}
    for seed, value in cpoly.items():
        write_run(tmp_path, "cpoly", seed, value)
    for seed, value in poly.items():
        write_run(tmp_path, "poly", seed, value)
    groups = quiet(tmp_path)
    (comparison,) = compare(groups, "poly")
    assert comparison.baseline.method == "poly" and sorted(comparison.seeds) == [1, 2, 3]
    a, b = [cpoly[s] for s in (1, 2, 3)], [poly[s] for s in (1, 2, 3)]
    assert comparison.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    assert comparison.n_pairs == 3 and comparison.mean == pytest.approx(statistics.fmean(diffs))
    assert (comparison.ci_low, comparison.ci_high) == pytest.approx(
        stats.t.interval(0.95, 2, loc=statistics.fmean(diffs), scale=statistics.stdev(diffs) / math.sqrt(3))
    )
    text = markdown_table(groups, comparisons=[comparison])
    assert "### vs poly: paired by seed, group - baseline (paired t-test)" in text
    assert f"| synthetic-tiny_t5-cpoly | synthetic-tiny_t5-poly | 3 | {statistics.fmean(diffs):.2f} |" in text
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(csv_table(groups, comparisons=[comparison])))}
    assert float(rows["cpoly"]["p_value"]) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-5)
    assert rows["cpoly"]["n_pairs"] == "3" and rows["cpoly"]["baseline"] == "synthetic-tiny_t5-poly"
    assert rows["poly"]["diff_mean"] == rows["poly"]["p_value"] == rows["poly"]["n_pairs"] == ""

    write_run(tmp_path, "mhr", 4, 1.0)  # no seed in common with poly: no test
    mhr, _ = compare(quiet(tmp_path), "poly")  # the paper's order: poly, mhr, cpoly
    assert mhr.group.method == "mhr" and mhr.n_pairs == 0 and math.isnan(mhr.p_value) and "no test" in mhr.note
    write_run(tmp_path, "mhr", 1, 1.0)  # one seed in common
    mhr, _ = compare(quiet(tmp_path), "poly")
    assert mhr.seeds == [1] and math.isnan(mhr.mean) and math.isnan(mhr.p_value)


def test_paired_bootstrap(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(5)
    base = rng.normal(50, 5, size=8)
    better = base + 10 + rng.normal(0, 0.5, size=8)
    same = base + np.array([1.0, -1.5, 2.0, -2.5, 0.5, -0.5, 3.0, -2.0])  # mean difference 0
    low, high, p = paired_test(better, base, "bootstrap")
    assert 0 <= p <= 1 and p < 0.01 and 9 < low < 10 < high < 11
    assert paired_test(better, base, "bootstrap") == (low, high, p)  # seeded
    _, _, p_same = paired_test(same, base, "bootstrap")
    assert 0.5 < p_same <= 1
    d = same - base
    means = d[np.random.default_rng(0).integers(0, 8, size=(10_000, 8))].mean(axis=1)
    assert p_same == pytest.approx(min(1.0, 2 * min(np.mean(means <= 0), np.mean(means >= 0))))

    for seed in range(1, 9):
        write_run(tmp_path, "cpoly", seed, float(better[seed - 1]))
        write_run(tmp_path, "poly", seed, float(base[seed - 1]))
    groups = quiet(tmp_path)
    (comparison,) = compare(groups, "poly", test="bootstrap")
    assert comparison.test == "bootstrap" and comparison.p_value == pytest.approx(p)
    assert "| < 0.0001 |" in markdown_table(groups, comparisons=[comparison])  # no resample at or below 0


def test_baseline_groups_are_matched_on_everything_but_the_method(tmp_path: Path) -> None:
    for n_train, (c, p) in {100: (60.0, 50.0), 400: (90.0, 70.0)}.items():
        for seed in (1, 2, 3):
            write_run(tmp_path, "cpoly", seed, c + seed, benchmark__n_train_per_task=n_train)
            write_run(tmp_path, "poly", seed, p + seed * seed, benchmark__n_train_per_task=n_train)
    write_run(tmp_path, "cpoly", 1, 1.0, benchmark__n_train_per_task=1600)  # no poly at 1600
    groups = quiet(tmp_path)
    comparisons = {c.group.label: c for c in compare(groups, "poly")}
    assert set(comparisons) == {f"synthetic-tiny_t5-cpoly benchmark.n_train_per_task={n}" for n in (100, 400, 1600)}
    for n_train in (100, 400):
        c = comparisons[f"synthetic-tiny_t5-cpoly benchmark.n_train_per_task={n_train}"]
        assert c.baseline.label == f"synthetic-tiny_t5-poly benchmark.n_train_per_task={n_train}"
        assert c.n_pairs == 3
    orphan = comparisons["synthetic-tiny_t5-cpoly benchmark.n_train_per_task=1600"]
    assert orphan.baseline is None and "benchmark.n_train_per_task=1600" in orphan.note
    # optim.router_lr follows the method (it is `${method.router_lr}`): shared_lora still finds poly
    for seed in (1, 2, 3):
        write_run(tmp_path, "shared_lora", seed, 30.0 + seed, benchmark__n_train_per_task=400)
    shared = next(c for c in compare(quiet(tmp_path), "poly") if c.group.method == "shared_lora")
    assert shared.baseline.label == "synthetic-tiny_t5-poly benchmark.n_train_per_task=400"
    # a label names one baseline group for its whole section
    label = "synthetic-tiny_t5-poly benchmark.n_train_per_task=100"
    assert {c.baseline.label for c in compare(groups, label)} == {label}


def test_curve_table_and_log_axis(tmp_path: Path) -> None:
    for n_train, (c, p) in {10: (40.0, 30.0), 100: (60.0, 45.0), 1000: (80.0, 70.0)}.items():
        for seed in (1, 2, 3):
            write_run(tmp_path, "cpoly", seed, c + 2 * (seed - 2), benchmark__n_train_per_task=n_train)
            if n_train != 100:
                write_run(tmp_path, "poly", seed, p, benchmark__n_train_per_task=n_train)
    write_run(tmp_path, "poly", 1, 44.0, benchmark__n_train_per_task=100)
    lines = curve_table(quiet(tmp_path)).splitlines()
    assert lines[0].startswith("## synthetic: char_similarity against benchmark.n_train_per_task")
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    xs = [f"benchmark.n_train_per_task={n}" for n in (10, 100, 1000)]  # numeric order
    assert header == ["char_similarity (test, final)", *xs]
    assert "| synthetic-tiny_t5-poly | 30.00 ± 0.00 (3) | 44.00 (1) | 70.00 ± 0.00 (3) |" in lines
    assert "| synthetic-tiny_t5-cpoly | 40.00 ± 2.00 (3) | 60.00 ± 2.00 (3) | 80.00 ± 2.00 (3) |" in lines
    assert log_x_axis([10, 100, 1000]) and not log_x_axis([100, 400, 800]) and not log_x_axis([0, 100])


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_baseline_curve_plots_and_bad_input(tmp_path: Path, capsys) -> None:
    allocation = {"tasks": ["a", "b", "c"], "shared": [[0.9, 0.1], [0.8, 0.2], [0.0, 1.0]]}
    for seed in (2, 1):
        for n_train in (100, 1600):
            n = {"benchmark__n_train_per_task": n_train}
            write_run(tmp_path / "runs", "cpoly", seed, 60.0 + seed, allocation=allocation, **n)
            write_run(tmp_path / "runs", "poly", seed, 50.0 + seed, **n)
    runs = str(tmp_path / "runs")
    pngs = [tmp_path / name for name in ("bars.png", "curve.png", "tree.png")]
    figures = ["--plot", str(pngs[0]), "--curve", str(pngs[1]), "--dendrogram", str(pngs[2])]
    code, out, err = cli([runs, "--baseline", "poly", *figures], capsys)
    assert code == 0, err
    assert "### vs poly" in out and "## synthetic: char_similarity against benchmark.n_train_per_task" in out
    for png in pngs:
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = allocation_panels(quiet(tmp_path / "runs"))
    assert len(panels) == 2 and all("(seed 1, the first of 2 seeds)" in title for title, _, _ in panels)

    code, out, err = cli([runs, "--format", "summary-csv", "--baseline", "poly", "--test", "bootstrap"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and {r["test"] for r in rows if r["method"] == "cpoly"} == {"bootstrap"}
    assert {"diff_mean", "diff_ci_low", "diff_ci_high", "p_value", "n_pairs"} <= set(rows[0])

    code, out, err = cli([runs, "--baseline", "lora"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "'lora'" in err and "cpoly" in err and "synthetic-tiny_t5-poly benchmark.n_train_per_task=100" in err
    code, out, err = cli([runs, "--curve", str(tmp_path / "x.png"), "--x", "optim.lrr"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "'optim.lrr'" in err and "benchmark.n_train_per_task" in err and not (tmp_path / "x.png").exists()
    write_run(tmp_path / "plain", "poly", 1, 1.0)
    code, out, err = cli([str(tmp_path / "plain"), "--dendrogram", str(tmp_path / "t.png")], capsys)
    assert code == 2 and "allocation" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- splits, per-run CSV, tables in the docs


def test_split_and_which_pick_the_scores_and_say_so(multirun: Path) -> None:
    runs = load_runs([multirun], warn=lambda m: None)
    test_final = summarise(runs, warn=lambda m: None)[1]
    dev_final = summarise(runs, split="dev", warn=lambda m: None)[1]
    test_best = summarise(runs, which="best", warn=lambda m: None)[1]
    assert test_final.method == "cpoly" and test_final.mean == pytest.approx(73.0)
    assert dev_final.mean == pytest.approx(72.0) and test_best.mean == pytest.approx(78.0)
    assert test_best.scores_label == "test split, best/ (the step chosen on dev)"
    assert dev_final.scores_label == "dev split, final adapters"


def test_a_results_json_from_before_the_dev_split_is_skipped_with_a_reason(tmp_path: Path) -> None:
    old = results("cpoly", 1, {"task_00": 1.0})
    old["final"], old["best"] = old.pop("test")["final"], {}
    del old["dev"]
    write_results(tmp_path / "r" / "results.json", old)
    warnings: list[str] = []
    assert load_runs([tmp_path], warn=warnings.append) == []
    assert len(warnings) == 1 and "before the dev split" in warnings[0]


def test_the_per_run_csv_holds_every_run_and_gives_the_tables_the_folders_give(tmp_path: Path, capsys) -> None:
    for seed in (1, 2, 3):
        write_run(tmp_path / "runs", "cpoly", seed, 70.0 + seed, optim__lr=0.001)
        write_run(tmp_path / "runs", "poly", seed, 60.0 + 2 * seed, optim__lr=0.001)
    code, out, err = cli([str(tmp_path / "runs"), "--format", "csv"], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 6 and {r["seed"] for r in rows} == {"1", "2", "3"}
    assert {"git_sha", "wall_time_s", "dev/final/avg/char_similarity", "test/best/avg/char_similarity"} <= set(rows[0])
    assert "test/final/task_00/char_similarity" in rows[0] and "config:method.name" in rows[0]
    table = tmp_path / "runs.csv"
    table.write_text(out)
    for args in (["--baseline", "cpoly"], ["--which", "best", "--split", "dev", "--no-per-task"]):
        from_folders = cli([str(tmp_path / "runs"), *args], capsys)[1]
        from_csv = cli([str(table), *args], capsys)[1]
        assert from_csv == from_folders and "cpoly" in from_csv


def test_docs_tables_are_rewritten_from_their_csv_and_check_names_the_one_that_differs(tmp_path: Path, capsys) -> None:
    for seed in (1, 2):
        write_run(tmp_path / "runs", "cpoly", seed, 70.0 + seed)
        write_run(tmp_path / "runs", "poly", seed, 60.0 + seed)
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "m.csv").write_text(cli([str(tmp_path / "runs"), "--format", "csv"], capsys)[1])
    marker = "<!-- report: docs/results/m.csv --no-per-task --baseline cpoly -->"
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nProse before.\n\n{marker}\n| typed by hand | 99.9 |\n<!-- /report -->\n\nProse after.\n")
    (tmp_path / "docs" / "other.md").write_text("no tables here\n")

    code, _, err = cli(["--docs", "--check", "--root", str(tmp_path)], capsys)
    assert code == 1 and "README.md:5 (report: docs/results/m.csv --no-per-task --baseline cpoly)" in err
    assert "typed by hand" in readme.read_text()  # --check writes nothing
    assert cli(["--docs", "--root", str(tmp_path)], capsys)[0] == 0
    text = readme.read_text()
    assert text.startswith("# x\n\nProse before.\n\n" + marker + "\n") and text.endswith(
        "<!-- /report -->\n\nProse after.\n"
    )
    assert "typed by hand" not in text and "| synthetic-tiny_t5-cpoly |" in text and "*vs cpoly" in text
    assert "## " not in text.split(marker)[1]  # no section titles inside a document
    assert cli(["--docs", "--check", "--root", str(tmp_path)], capsys)[0] == 0
    readme.write_text(text.replace("71.50", "71.60"))  # a hand-edited number cannot land
    code, _, err = cli(["--docs", "--check", "--root", str(tmp_path)], capsys)
    assert code == 1 and "README.md:5" in err
    readme.write_text(text.replace("docs/results/m.csv", "docs/results/missing.csv"))
    code, _, err = cli(["--docs", "--check", "--root", str(tmp_path)], capsys)
    assert code == 2 and "missing.csv" in err


def test_the_committed_docs_tables_match_their_results() -> None:
    """Every results table of README.md and docs/ is what its committed docs/results/*.csv gives."""
    done = subprocess.run(
        [sys.executable, "-m", "cpoly.report", "--docs", "--check"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def test_transfer_arms_are_paired_with_a_from_scratch_baseline_at_each_size(tmp_path: Path) -> None:
    """A run from a library (init_from, transfer.*) is its own arm, one group per (method, variant, size),
    and --baseline task_lora pairs it with task_lora from scratch at the same size."""
    for n_train in (4, 16):
        for seed in (1, 2, 3):
            write_run(tmp_path, "task_lora", seed, 40.0 + n_train + seed, benchmark__n_train_per_task=n_train)
            for variant, trainable in (("routing", ["routing"]), ("all", ["routing", "shared_skills"])):
                folder = write_run(
                    tmp_path,
                    "cpoly",
                    seed,
                    50.0 + n_train + seed * (2 if variant == "all" else 1),
                    benchmark__n_train_per_task=n_train,
                    init_from="library-cpoly-s1",
                    transfer={"name": variant, "trainable": trainable},
                )
                run = json.loads((folder / "results.json").read_text())
                run["group"] = f"synthetic-tiny_t5-cpoly-from_{variant}"
                (folder / "results.json").write_text(json.dumps(run))
    comparisons = {c.group.label: c for c in compare(quiet(tmp_path), "task_lora")}
    for n_train in (4, 16):
        for variant in ("routing", "all"):
            c = comparisons[f"synthetic-tiny_t5-cpoly-from_{variant} benchmark.n_train_per_task={n_train}"]
            assert c.baseline.label == f"synthetic-tiny_t5-task_lora benchmark.n_train_per_task={n_train}"
            assert c.n_pairs == 3 and c.mean == pytest.approx(10.0 + (6 if variant == "all" else 0) / 3)
