"""SuperGLUE metric over label words, one task per call, with the official per-task score.

Predictions and references are label words (the prompt's options); encoder backbones pass the word of
their predicted index, so one scoring path serves every backbone. Both sides are compared after
lower-casing and collapsing whitespace. All values are percentages (0-100).

| task | keys | score |
|---|---|---|
| cb | accuracy, f1_macro | mean of accuracy and f1_macro |
| multirc | accuracy, f1a, em | mean of f1a and em |
| record | exact_match, f1 | mean of f1 and exact_match |
| boolq, copa, rte, wic, wsc | accuracy | accuracy |
| any other task | accuracy (+ f1_macro when `choices` are given) | accuracy |

- f1_macro: per-class F1 averaged over the classes (among `choices`) that occur in the references or the
  predictions; a prediction that is no label word is wrong for its gold class and a false positive of none
  (scikit-learn's `f1_score(average="macro", labels=those classes)`).
- f1a: binary F1 over all answer options, positive class = the second label word (`choices[1]`, "true")
  (the same call over that one class).
- em: percentage of questions (`groups`) whose every answer option is predicted correctly.
- record: SQuAD-style normalisation (lower-case, no punctuation, no articles), max over the gold answers.
"""

import re
import string
from collections import Counter

import datasets
import evaluate
from sklearn.metrics import f1_score

_CITATION = """\
@inproceedings{wang2019superglue,
  title={SuperGLUE: A Stickier Benchmark for General-Purpose Language Understanding Systems},
  author={Wang, Alex and Pruksachatkun, Yada and Nangia, Nikita and others},
  booktitle={NeurIPS},
  year={2019}
}
"""

_DESCRIPTION = "SuperGLUE per-task metrics on label words: accuracy, CB macro-F1, MultiRC F1a/EM, ReCoRD F1/EM."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of predicted label words (or answer strings for record).
    references: list of lists of gold strings (one label word for classification tasks).
    task: the SuperGLUE task name (boolq, cb, copa, multirc, record, rte, wic, wsc).
    choices: the task's label words, negative first for binary tasks (needed by cb macro-F1 and multirc).
    groups: one question id per example (needed by multirc EM).
Returns:
    dict with the task's keys and `score`, the official task score.
Example:
    >>> metric.compute(predictions=["true", "false"], references=[["true"], ["true"]], task="rte")
    {'accuracy': 50.0, 'score': 50.0}
"""

_PUNCTUATION = set(string.punctuation)


def _label(text):
    return " ".join(text.strip().lower().split())


def _squad_normalize(text):
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction, reference):
    pred_tokens, ref_tokens = _squad_normalize(prediction).split(), _squad_normalize(reference).split()
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def macro_f1(predictions, golds, labels):
    """scikit-learn's macro-F1 over the `labels` that occur in `golds` or `predictions` (0 if none)."""
    present = [label for label in labels if label in golds or label in predictions]
    if not present:
        return 0.0
    return float(f1_score(golds, predictions, labels=present, average="macro", zero_division=0))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Superglue(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://super.gluebenchmark.com/"],
        )

    def _compute(self, predictions, references, task="", choices=None, groups=None):
        if len(predictions) != len(references) or not predictions:
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references (need > 0, equal)")
        if task == "record":
            return self._record(predictions, references)
        preds = [_label(p) for p in predictions]
        golds = [_label(refs[0]) for refs in references]
        labels = [_label(c) for c in choices] if choices else None
        accuracy = 100.0 * sum(p == g for p, g in zip(preds, golds, strict=True)) / len(golds)
        if task == "cb":
            f1_macro = 100.0 * macro_f1(preds, golds, labels or sorted(set(golds)))
            return {"accuracy": accuracy, "f1_macro": f1_macro, "score": (accuracy + f1_macro) / 2}
        if task == "multirc":
            return self._multirc(preds, golds, labels, groups, accuracy)
        result = {"accuracy": accuracy}
        if labels and task not in ("boolq", "copa", "rte", "wic", "wsc"):
            result["f1_macro"] = 100.0 * macro_f1(preds, golds, labels)
        result["score"] = accuracy
        return result

    @staticmethod
    def _multirc(preds, golds, labels, groups, accuracy):
        if not labels or len(labels) != 2:
            raise ValueError("multirc needs choices=[negative word, positive word]")
        if groups is None or len(groups) != len(preds):
            raise ValueError("multirc needs one group (question id) per example for EM")
        f1a = 100.0 * macro_f1(preds, golds, [labels[1]])  # the positive class's F1: a macro over one class
        all_correct = {}
        for p, g, group in zip(preds, golds, groups, strict=True):
            all_correct[group] = all_correct.get(group, True) and p == g
        em = 100.0 * sum(all_correct.values()) / len(all_correct)
        return {"accuracy": accuracy, "f1a": f1a, "em": em, "score": (f1a + em) / 2}

    @staticmethod
    def _record(predictions, references):
        em = f1 = 0.0
        for prediction, refs in zip(predictions, references, strict=True):
            if not refs:
                raise ValueError("a ReCoRD example has no gold answer")
            em += max(float(_squad_normalize(prediction) == _squad_normalize(r)) for r in refs)
            f1 += max(_token_f1(prediction, r) for r in refs)
        n = len(predictions)
        em, f1 = 100.0 * em / n, 100.0 * f1 / n
        return {"exact_match": em, "f1": f1, "score": (em + f1) / 2}
