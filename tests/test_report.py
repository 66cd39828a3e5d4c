"""`python -m cpoly.report`: finding results, grouping seeds, mean ± std, tables and the bar chart."""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from pathlib import Path

import pytest

from cpoly.logging import write_results
from cpoly.report import csv_table, find_results, load_runs, main, markdown_table, summarise

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
        "final": scores(0.0),
        "best": scores(best_offset),
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
    assert lines[0] == "## synthetic: char_similarity, final (mean ± std over seeds)"
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[:5] == ["group", "backbone", "method", "seeds", "char_similarity (avg)"]
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
        [sys.executable, "-m", "cpoly.report", str(multirun), "--format", "csv", "--which", "best"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("group,benchmark,backbone,method")
    assert "synthetic-tiny_t5-cpoly,synthetic,tiny_t5,cpoly,char_similarity,best,3" in done.stdout
