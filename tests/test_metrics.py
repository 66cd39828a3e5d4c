"""Metrics shipped as `evaluate` modules: values against direct computations and hand-computed cases."""

from __future__ import annotations

import evaluate
import pytest
from rouge_score import rouge_scorer

from cpoly.data.example import Example
from cpoly.eval import available_metrics, load_metric, metric_path, score_by_task


def test_every_metric_loads_by_path_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert available_metrics() == ["classification", "superglue", "superni", "synthetic"]
    for name in available_metrics():
        module = evaluate.load(str(metric_path(name)), keep_in_memory=True)
        assert type(module).__name__.lower() == name
    assert load_metric(str(metric_path("synthetic").parent)).compute(predictions=["a"], references=[["a"]])
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        metric_path("bleu")


# ------------------------------------------------------------------------------------------ superni


def test_superni_rouge_l_matches_rouge_score_max_over_references():
    predictions = [
        "The cats are sitting on the mat",
        "a quick brown fox",
        "nothing in common",
        "Running fast.",
    ]
    references = [
        ["the cat sat on the mat", "dogs bark"],
        ["the quick brown fox jumps"],
        ["xyz"],
        ["runs fast", "ran"],
    ]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(
        max(scorer.score(ref, pred)["rougeL"].fmeasure for ref in refs)
        for pred, refs in zip(predictions, references, strict=True)
    ) / len(predictions)
    result = load_metric("superni").compute(predictions=predictions, references=references)
    assert result["rougeL"] == pytest.approx(100 * expected)
    assert 0 < result["rougeL"] < 100


def test_superni_exact_match_uses_the_official_normalisation():
    metric = load_metric("superni")
    cases = [
        ("The cat sat.", ["the cat  sat"], 100.0),  # case, punctuation, spaces
        ("cat", ["the cat"], 0.0),  # articles are kept (unlike SQuAD)
        ("Yes!", ["No", "yes"], 100.0),  # any reference
    ]
    for prediction, refs, expected in cases:
        assert metric.compute(predictions=[prediction], references=[refs])["exact_match"] == expected


def test_superni_empty_reference_is_an_error():
    with pytest.raises(ValueError, match="no non-empty reference"):
        load_metric("superni").compute(predictions=["x"], references=[["", " "]])


# ---------------------------------------------------------------------------------------- superglue


def test_cb_accuracy_and_macro_f1_by_hand():
    golds = ["entailment", "entailment", "contradiction", "neutral", "contradiction"]
    preds = ["entailment", "contradiction", "contradiction", "neutral", "no idea"]
    result = load_metric("superglue").compute(
        predictions=preds,
        references=[[g] for g in golds],
        task="cb",
        choices=["entailment", "contradiction", "neutral"],
    )
    # per class F1 = 2tp / (2tp + fp + fn): entailment 2/3, contradiction 2/4, neutral 1; "no idea" is a miss
    f1_macro = 100 * (2 / 3 + 2 / 4 + 1) / 3
    assert result["accuracy"] == pytest.approx(60.0)
    assert result["f1_macro"] == pytest.approx(f1_macro)
    assert result["score"] == pytest.approx((60.0 + f1_macro) / 2)


def test_cb_macro_f1_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    labels = ["entailment", "contradiction", "neutral"]
    golds = ["entailment", "neutral", "contradiction", "contradiction", "entailment", "neutral", "entailment"]
    preds = ["entailment", "entailment", "contradiction", "neutral", "neutral", "neutral", "contradiction"]
    result = load_metric("superglue").compute(
        predictions=preds, references=[[g] for g in golds], task="cb", choices=labels
    )
    expected = sklearn_metrics.f1_score(golds, preds, labels=labels, average="macro")
    assert result["f1_macro"] == pytest.approx(100 * expected)


def hand_macro_f1(predictions, golds, labels):
    """The macro-F1 the metrics computed by hand before they called scikit-learn (the reference)."""
    present = [label for label in labels if label in golds or label in predictions]
    scores = []
    for label in present:
        tp = sum(p == label and g == label for p, g in zip(predictions, golds, strict=True))
        wrong = sum((p == label) != (g == label) for p, g in zip(predictions, golds, strict=True))  # fp + fn
        scores.append(2 * tp / (2 * tp + wrong) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


MACRO_F1_CASES = [
    # (golds, predictions, choices): labels absent from both sides, predictions that are no label word,
    # a class never predicted, one never gold, nothing right, a single class
    (["a", "a", "b"], ["a", "b", "b"], ["a", "b", "c", "d"]),
    (["a", "b", "a"], ["x", "y", "a"], ["a", "b", "c"]),
    (["a", "a", "a"], ["b", "b", "c"], ["a", "b", "c"]),
    (["c", "c"], ["c", "c"], ["a", "b", "c"]),
    (["a", "b"], ["z", "z"], ["a", "b"]),
    (["p"], ["q"], ["x"]),
    (["b", "a", "c", "a", "b", "c", "c"], ["b", "c", "c", "a", "a", "b", "c"], None),
]


@pytest.mark.parametrize(("golds", "preds", "choices"), MACRO_F1_CASES)
def test_macro_f1_equals_the_former_hand_written_one(golds, preds, choices):
    refs = [[g] for g in golds]
    labels = choices or sorted(set(golds) | set(preds))
    expected = 100 * hand_macro_f1(preds, golds, labels)
    classification = load_metric("classification").compute(predictions=preds, references=refs, choices=choices)
    assert classification["f1_macro"] == pytest.approx(expected, rel=1e-12, abs=1e-12)
    cb = load_metric("superglue").compute(predictions=preds, references=refs, task="cb", choices=choices)
    cb_labels = choices or sorted(set(golds))
    assert cb["f1_macro"] == pytest.approx(100 * hand_macro_f1(preds, golds, cb_labels), rel=1e-12, abs=1e-12)
    if choices and len(choices) == 2:
        multirc = load_metric("superglue").compute(
            predictions=preds, references=refs, task="multirc", choices=choices, groups=list(range(len(preds)))
        )
        assert multirc["f1a"] == pytest.approx(100 * hand_macro_f1(preds, golds, [choices[1]]), abs=1e-12)


def test_multirc_f1a_and_em_by_hand():
    # question q1: three options, q2: two, q3: one
    groups = ["q1", "q1", "q1", "q2", "q2", "q3"]
    golds = ["true", "false", "true", "false", "true", "true"]
    preds = ["true", "false", "false", "false", "true", "false"]
    result = load_metric("superglue").compute(
        predictions=preds,
        references=[[g] for g in golds],
        task="multirc",
        choices=["false", "true"],
        groups=groups,
    )
    # positives: tp = 2, fp = 0, fn = 2 -> F1a = 4 / 6; only q2 is all correct -> EM = 1 / 3
    assert result["f1a"] == pytest.approx(100 * 4 / 6)
    assert result["em"] == pytest.approx(100 / 3)
    assert result["score"] == pytest.approx((100 * 4 / 6 + 100 / 3) / 2)
    with pytest.raises(ValueError, match="group"):
        load_metric("superglue").compute(
            predictions=preds, references=[[g] for g in golds], task="multirc", choices=["false", "true"]
        )


def test_record_em_and_f1_by_hand():
    result = load_metric("superglue").compute(
        predictions=["the Ada Lovelace", "Babbage"],
        references=[["Ada Lovelace", "Lovelace"], ["Charles Babbage"]],
        task="record",
    )
    # 1: exact after SQuAD normalisation (articles dropped); 2: precision 1, recall 1/2 -> F1 2/3
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert result["score"] == pytest.approx((result["exact_match"] + result["f1"]) / 2)


def test_accuracy_tasks_compare_label_words_case_insensitively():
    result = load_metric("superglue").compute(
        predictions=[" True", "false", "maybe"],
        references=[["true"], ["true"], ["false"]],
        task="rte",
        choices=["false", "true"],
    )
    assert result == {"accuracy": pytest.approx(100 / 3), "score": pytest.approx(100 / 3)}


# ---------------------------------------------------------------------------- synthetic, classification


def test_synthetic_exact_match_and_char_similarity():
    metric = load_metric("synthetic")
    result = metric.compute(
        predictions=["sitting", "ABC", "", " dcba "], references=[["kitten"], ["abc"], [""], ["dcba"]]
    )
    # kitten -> sitting: 3 edits over 7 characters; ABC vs abc: 3 substitutions; empty vs empty: identical
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["char_similarity"] == pytest.approx(100 * ((1 - 3 / 7) + 0 + 1 + 1) / 4)
    best = metric.compute(predictions=["abcd"], references=[["xxxx", "abce"]])
    assert best["char_similarity"] == pytest.approx(75.0)


def test_classification_accuracy_and_macro_f1():
    result = load_metric("classification").compute(
        predictions=["a", "b", "a", "c"], references=[["a"], ["a"], ["a"], ["b"]], choices=["a", "b", "c"]
    )
    # a: tp 2 fp 0 fn 1 -> 4/5; b: tp 0 -> 0; c: predicted once, never gold -> 0
    assert result["accuracy"] == pytest.approx(50.0)
    assert result["f1_macro"] == pytest.approx(100 * (4 / 5) / 3)


# ------------------------------------------------------------------------------------------ scoring


def test_score_by_task_gives_per_task_metrics_and_their_macro_average():
    examples = [
        Example("t1", "s", ["the cat sat"], id="1"),
        Example("t1", "s", ["a dog"], id="2"),
        Example("t2", "s", ["hello world"], id="3"),
    ]
    scores = score_by_task("superni", examples, ["the cat sat", "cat", "hello world"])
    assert scores["t1"]["exact_match"] == pytest.approx(50.0) and scores["t2"]["exact_match"] == pytest.approx(100.0)
    assert scores["avg"]["exact_match"] == pytest.approx(75.0)  # macro: mean of the task means
    assert scores["avg"]["rougeL"] == pytest.approx((scores["t1"]["rougeL"] + scores["t2"]["rougeL"]) / 2)
    with pytest.raises(ValueError, match="2 predictions for 3 examples"):
        score_by_task("superni", examples, ["a", "b"])


def test_score_by_task_passes_choices_and_groups_and_serves_encoder_predictions():
    words = ["false", "true"]
    examples = [
        Example("multirc", "s", "true", choices=words, id="a", group="q1"),
        Example("multirc", "s", "false", choices=words, id="b", group="q1"),
        Example("multirc", "s", "true", choices=words, id="c", group="q2"),
        Example("cb", "s", "neutral", choices=["entailment", "contradiction", "neutral"], id="d"),
    ]
    predicted_index = [1, 0, 0, 2]  # what an encoder backbone predicts
    predictions = [ex.choices[i] for ex, i in zip(examples, predicted_index, strict=True)]
    scores = score_by_task("superglue", examples, predictions)
    assert scores["multirc"]["em"] == pytest.approx(50.0) and scores["multirc"]["f1a"] == pytest.approx(100 * 2 / 3)
    assert scores["cb"] == {"accuracy": 100.0, "f1_macro": 100.0, "score": 100.0}
    assert scores["avg"]["score"] == pytest.approx((scores["multirc"]["score"] + 100.0) / 2)
    assert scores["avg"]["f1_macro"] == 100.0  # averaged over the tasks that report it


def test_majority_baseline_answers_each_tasks_most_frequent_training_label():
    from cpoly.data.example import Example
    from cpoly.eval.scoring import majority_baseline

    yes_no = ["no", "yes"]
    train = [Example("boolq", "q", t, choices=yes_no, id=str(i)) for i, t in enumerate(["yes", "yes", "no"])]
    train += [Example("cb", "q", t, choices=["a", "b", "c"], id=f"c{i}") for i, t in enumerate(["c", "b", "c"])]
    evaluation = [Example("boolq", "q", t, choices=yes_no, id=f"e{i}") for i, t in enumerate(["yes", "no", "no", "no"])]
    evaluation += [Example("cb", "q", "c", choices=["a", "b", "c"], id="ec")]
    scores = majority_baseline("classification", train, evaluation)
    assert scores["boolq"]["accuracy"] == 25.0 and scores["cb"]["accuracy"] == 100.0  # percentages
    assert scores["avg"]["accuracy"] == 62.5
    generative = [Example("t", "q", "x", id="g")]
    assert majority_baseline("classification", generative, generative) is None
