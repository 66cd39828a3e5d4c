"""SuperNI metric: ROUGE-L and exact match as the official Super-NaturalInstructions evaluation computes them.

- rougeL: rouge-score's `RougeScorer(["rougeL"], use_stemmer=True)` F-measure of (prediction, reference),
  the maximum over an example's references, averaged over examples, times 100.
- exact_match: prediction equals a reference after the official normalisation (lower-case, drop
  punctuation, collapse whitespace; articles are kept, unlike SQuAD), averaged over examples, times 100.

Both are in percentage points (0-100), as the official script reports them (it also rounds to 4 decimals
for display; this module does not round). An example whose references are all empty is an error: it
would otherwise score zero silently. Self-contained so that `evaluate.load(<path to this file>)` works
offline and outside the cpoly package.
"""

import string

import datasets
import evaluate
from rouge_score import rouge_scorer

_CITATION = """\
@inproceedings{wang2022super,
  title={Super-NaturalInstructions: Generalization via Declarative Instructions on 1600+ NLP Tasks},
  author={Wang, Yizhong and Mishra, Swaroop and others},
  booktitle={EMNLP},
  year={2022}
}
"""

_DESCRIPTION = "ROUGE-L (stemmed, F-measure) and exact match, max over references, as SuperNI's official evaluation."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated strings.
    references: list of lists of acceptable reference strings (at least one non-empty each).
Returns:
    rougeL: mean over examples of the best ROUGE-L F-measure, x100.
    exact_match: percentage of examples matching a reference after normalisation.
Example:
    >>> metric = evaluate.load("cpoly/eval/metrics/superni")
    >>> metric.compute(predictions=["The cat sat."], references=[["the cat sat", "a dog"]])
    {'rougeL': 100.0, 'exact_match': 100.0}
"""

_PUNCTUATION = set(string.punctuation)


def normalize_answer(text):
    """Official SuperNI normalisation: lower-case, remove punctuation, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(text.split())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Superni(evaluate.Metric):
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
            reference_urls=["https://github.com/allenai/natural-instructions/blob/master/eval/automatic/evaluation.py"],
        )

    def _download_and_prepare(self, dl_manager):
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def _compute(self, predictions, references):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
        if not predictions:
            raise ValueError("no predictions to score")
        rouge_total, em_total = 0.0, 0.0
        for i, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
            refs = [r for r in refs if r.strip()]
            if not refs:
                raise ValueError(f"example {i} has no non-empty reference (an empty target would score zero silently)")
            rouge_total += max(self.scorer.score(ref, prediction)["rougeL"].fmeasure for ref in refs)
            normalized = normalize_answer(prediction)
            em_total += float(any(normalized == normalize_answer(ref) for ref in refs))
        n = len(predictions)
        return {"rougeL": 100.0 * rouge_total / n, "exact_match": 100.0 * em_total / n}
