"""Task dendrograms of allocations: the clustering finds a block structure, cophenetic agreement with a
reference, all-zero rows and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster

from cpoly.logging.dendrogram import cophenetic_agreement, plot_dendrograms, task_linkage

TASKS = [f"t{i}" for i in range(8)]


def block_allocation(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tasks 0, 2, 4, 6 use skills 0-1 and tasks 1, 3, 5, 7 skills 2-3 (interleaved, so that task order
    alone cannot give the blocks), with noise; and the true block similarity (1 within, 0 across)."""
    rng = np.random.default_rng(seed)
    block = np.arange(8) % 2
    matrix = np.zeros((8, 4))
    for t, b in enumerate(block):
        matrix[t, 2 * b : 2 * b + 2] = rng.uniform(0.5, 1.0, size=2)
    matrix += rng.uniform(0.0, 0.1, size=matrix.shape)
    similarity = (block[:, None] == block[None, :]).astype(float)
    return matrix, similarity


def test_the_two_blocks_are_separate_clusters_and_agree_with_the_truth() -> None:
    matrix, similarity = block_allocation()
    linkage = task_linkage(matrix)
    assert linkage.shape == (7, 4)
    clusters = fcluster(linkage, t=2, criterion="maxclust")
    assert len(set(clusters[::2])) == 1 and len(set(clusters[1::2])) == 1 and clusters[0] != clusters[1]
    assert cophenetic_agreement(matrix, similarity) > 0.8
    # a wrong structure (first half vs second half) does not agree
    wrong = np.kron(np.eye(2), np.ones((4, 4)))
    assert cophenetic_agreement(matrix, wrong) < 0.3


def test_all_zero_rows_and_single_tasks_do_not_crash(tmp_path: Path) -> None:
    matrix, _ = block_allocation()
    matrix[3] = 0.0
    matrix[5] = 0.0
    linkage = task_linkage(matrix)
    assert linkage.shape == (7, 4) and np.all(np.isfinite(linkage)) and np.all(linkage[:, 2] >= 0)
    assert task_linkage(np.zeros((3, 2))).shape == (2, 4)
    assert task_linkage([[0.2, 0.8]]).shape == (0, 4)
    path = plot_dendrograms(
        [("C-Poly", TASKS, matrix), ("Poly", TASKS, np.zeros((8, 4))), ("one task", ["only"], [[1.0, 0.0]])],
        tmp_path / "tree.png",
    )
    assert path == tmp_path / "tree.png" and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_refused() -> None:
    matrix, similarity = block_allocation()
    with pytest.raises(ValueError, match="non-negative"):
        task_linkage(-matrix)
    with pytest.raises(ValueError, match="T x K"):
        task_linkage(np.ones(4))
    with pytest.raises(ValueError, match="8 x 8"):
        cophenetic_agreement(matrix, similarity[:4, :4])
    with pytest.raises(ValueError, match="3 task names for 8 allocation rows"):
        plot_dendrograms([("C-Poly", TASKS[:3], matrix)], "unused.png")
    with pytest.raises(ValueError, match="at least one panel"):
        plot_dendrograms([], "unused.png")
