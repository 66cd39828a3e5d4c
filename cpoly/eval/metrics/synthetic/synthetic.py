"""Synthetic string-transformation metric: exact match and character similarity, max over references.

- exact_match: percentage of predictions equal to a reference; case- and inner-space-sensitive (the tasks
  transform case and spacing), only surrounding whitespace is stripped.
- char_similarity: 100 * (1 - Levenshtein(prediction, reference) / max(len(prediction), len(reference))),
  the best over the references, averaged over examples (two empty strings are identical: 100). It gives
  partial credit where exact match gives none, so learning curves move before outputs are perfect.

Self-contained so that `evaluate.load(<path to this file>)` works offline and outside the cpoly package.
"""

import datasets
import evaluate

_DESCRIPTION = "Exact match and 1 - normalised Levenshtein distance (character similarity), max over references."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    references: list of lists of acceptable strings.
Returns:
    exact_match, char_similarity: percentages (0-100).
Example:
    >>> metric.compute(predictions=["abcd"], references=[["abce"]])
    {'exact_match': 0.0, 'char_similarity': 75.0}
"""


def levenshtein(a, b):
    """Edit distance (insertions, deletions, substitutions of one character each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def char_similarity(prediction, reference):
    longest = max(len(prediction), len(reference))
    return 1.0 if longest == 0 else 1.0 - levenshtein(prediction, reference) / longest


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Synthetic(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) != len(references) or not predictions:
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references (need > 0, equal)")
        exact = similarity = 0.0
        for i, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
            if not refs:
                raise ValueError(f"example {i} has no reference")
            prediction = prediction.strip()
            refs = [r.strip() for r in refs]
            exact += float(prediction in refs)
            similarity += max(char_similarity(prediction, r) for r in refs)
        n = len(predictions)
        return {"exact_match": 100.0 * exact / n, "char_similarity": 100.0 * similarity / n}
