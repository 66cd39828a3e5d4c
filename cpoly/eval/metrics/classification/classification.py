"""Classification metric over label words (bring-your-own data with `choices`): accuracy and macro-F1.

Predictions and references are label words, compared after lower-casing and collapsing whitespace;
encoder backbones pass the word of their predicted index. Values are percentages (0-100).
- accuracy: share of predictions equal to the gold word (the first reference).
- f1_macro: per-class F1 averaged over the classes (among `choices` when given) that occur in the
  references or the predictions; a prediction that is no label word is wrong for its gold class and a
  false positive of none (scikit-learn's `f1_score(average="macro", labels=those classes)`).
"""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = "Accuracy and macro-F1 over label words."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted label words.
    references: list of lists whose first string is the gold label word.
    choices: optional list of the label words (restricts the classes of macro-F1).
Returns:
    accuracy, f1_macro: percentages (0-100).
Example:
    >>> metric.compute(predictions=["a", "b"], references=[["a"], ["a"]], choices=["a", "b"])
    {'accuracy': 50.0, 'f1_macro': 33.33...}
"""


def _label(text):
    return " ".join(text.strip().lower().split())


def macro_f1(predictions, golds, labels):
    """scikit-learn's macro-F1 over the `labels` that occur in `golds` or `predictions` (0 if none)."""
    present = [label for label in labels if label in golds or label in predictions]
    if not present:
        return 0.0
    return float(f1_score(golds, predictions, labels=present, average="macro", zero_division=0))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
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

    def _compute(self, predictions, references, choices=None):
        if len(predictions) != len(references) or not predictions:
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references (need > 0, equal)")
        preds = [_label(p) for p in predictions]
        golds = [_label(refs[0]) for refs in references]
        labels = [_label(c) for c in choices] if choices else sorted(set(golds) | set(preds))
        accuracy = 100.0 * sum(p == g for p, g in zip(preds, golds, strict=True)) / len(golds)
        return {"accuracy": accuracy, "f1_macro": 100.0 * macro_f1(preds, golds, labels)}
