"""SuperGLUE tasks as verbalised text-to-text Examples: prompts, label words, and the Hub schema conversion.

Every classification task has fixed label words (`choices`, negative class first for binary tasks); the
target is the gold label word, so a generative backbone predicts the word and an encoder backbone the
index of the word in `choices`. The prompts list the options and end with the cue `Answer:`.

Prompts (`\\n` is a newline; long ones are cut over two backquoted lines here) and label words:

- boolq (false, true):
  `Passage: {passage}\\nQuestion: {question}?\\nOptions: false, true\\nAnswer:`
- cb (entailment, contradiction, neutral) and rte (entailment, not_entailment):
  `Premise: {premise}\\nHypothesis: {hypothesis}\\nDoes the premise entail the hypothesis?\\n`
  `Options: <the label words>\\nAnswer:`
- copa (choice1, choice2):
  `Premise: {premise}\\nQuestion: What was the cause?\\nchoice1: {choice1}\\nchoice2: {choice2}\\n`
  `Options: choice1, choice2\\nAnswer:` (for `effect`: `What happened as a result?`)
- multirc (false, true), one Example per answer option with `group` = its question:
  `Paragraph: {paragraph}\\nQuestion: {question}\\nCandidate answer: {answer}\\n`
  `Is the candidate answer correct?\\nOptions: false, true\\nAnswer:`
- wic (false, true):
  `Sentence 1: {sentence1}\\nSentence 2: {sentence2}\\nQuestion: Is the word "{word}" used with the same `
  `meaning in both sentences?\\nOptions: false, true\\nAnswer:`
- wsc (false, true), the pronoun marked `*like this*` in the text where the span index points at it:
  `Text: {text}\\nQuestion: In the text above, does the pronoun "*{span2}*" refer to "{span1}"?\\n`
  `Options: false, true\\nAnswer:`
- record (no label words: generative; targets = all gold answer strings):
  `Passage: {passage, "@highlight" lines as "- " bullets}\\nQuery: {query}\\nEntities: {e1}, {e2}, ...\\n`
  `Question: Which entity should replace @placeholder in the query?\\nAnswer:`

Records are read in the official jsonl schema (shared/data/superglue); `records_from_hub_rows` turns rows of
the Hub dataset `aps/super_glue` (ClassLabel ints, flattened MultiRC/WSC/ReCoRD) into that schema first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cpoly.data.example import Example
from cpoly.data.io import DataError, require, short_repr

# A sampling unit: the Examples scored together (a MultiRC question's options) or a single Example.
Unit = list[Example]


@dataclass(frozen=True)
class SuperGLUETask:
    name: str
    folder: str  # folder of the official jsonl release
    hub_config: str  # config name in aps/super_glue
    label_words: tuple[str, ...] | None
    build: Callable[[dict[str, Any], str, str], list[Unit]]  # (record, split tag, "file:line") -> units


def _options(words: Iterable[str]) -> str:
    return "Options: " + ", ".join(words) + "\nAnswer:"


def _one(task: str, split: str, idx: Any, source: str, words: tuple[str, ...], label: int) -> list[Unit]:
    example = Example(task=task, source=source, target=words[label], choices=list(words), id=f"{task}-{split}-{idx}")
    return [[example]]


def _bool_label(record: dict[str, Any], where: str) -> int:
    return int(require(record, "label", bool, where))


def _word_label(record: dict[str, Any], words: tuple[str, ...], where: str) -> int:
    label = require(record, "label", str, where)
    if label not in words:
        raise DataError(f"{where}: field 'label' should be one of {list(words)}, got {label!r}")
    return words.index(label)


def _int_label(record: dict[str, Any], n: int, where: str, field: str = "label") -> int:
    label = require(record, field, int, where)
    if not 0 <= label < n:
        raise DataError(f"{where}: field {field!r} should be in 0..{n - 1}, got {label!r}")
    return label


# ------------------------------------------------------------------------------------------ the tasks


BINARY = ("false", "true")
CB_WORDS = ("entailment", "contradiction", "neutral")
RTE_WORDS = ("entailment", "not_entailment")
COPA_WORDS = ("choice1", "choice2")


def _boolq(record: dict[str, Any], split: str, where: str) -> list[Unit]:
    question = require(record, "question", str, where).strip()
    question = question if question.endswith("?") else question + "?"
    source = f"Passage: {require(record, 'passage', str, where).strip()}\nQuestion: {question}\n" + _options(BINARY)
    return _one("boolq", split, record.get("idx"), source, BINARY, _bool_label(record, where))


def _entailment(task: str, words: tuple[str, ...]) -> Callable[[dict[str, Any], str, str], list[Unit]]:
    def build(record: dict[str, Any], split: str, where: str) -> list[Unit]:
        source = (
            f"Premise: {require(record, 'premise', str, where).strip()}\n"
            f"Hypothesis: {require(record, 'hypothesis', str, where).strip()}\n"
            "Does the premise entail the hypothesis?\n" + _options(words)
        )
        return _one(task, split, record.get("idx"), source, words, _word_label(record, words, where))

    return build


def _copa(record: dict[str, Any], split: str, where: str) -> list[Unit]:
    kind = require(record, "question", str, where)
    if kind not in ("cause", "effect"):
        raise DataError(f"{where}: field 'question' should be 'cause' or 'effect', got {kind!r}")
    question = "What was the cause?" if kind == "cause" else "What happened as a result?"
    source = (
        f"Premise: {require(record, 'premise', str, where).strip()}\nQuestion: {question}\n"
        f"choice1: {require(record, 'choice1', str, where).strip()}\n"
        f"choice2: {require(record, 'choice2', str, where).strip()}\n" + _options(COPA_WORDS)
    )
    return _one("copa", split, record.get("idx"), source, COPA_WORDS, _int_label(record, 2, where))


def _multirc(record: dict[str, Any], split: str, where: str) -> list[Unit]:
    passage = require(record, "passage", dict, where)
    paragraph = require(passage, "text", str, where).strip()
    p_idx = record.get("idx")
    units = []
    for question in require(passage, "questions", list, where):
        q_text = require(question, "question", str, where).strip()
        q_idx = question.get("idx")
        group = f"multirc-{split}-p{p_idx}-q{q_idx}"
        unit = []
        for answer in require(question, "answers", list, where):
            source = (
                f"Paragraph: {paragraph}\nQuestion: {q_text}\n"
                f"Candidate answer: {require(answer, 'text', str, where).strip()}\n"
                "Is the candidate answer correct?\n" + _options(BINARY)
            )
            label = _int_label(answer, 2, where)
            unit.append(
                Example(
                    task="multirc",
                    source=source,
                    target=BINARY[label],
                    choices=list(BINARY),
                    id=f"{group}-a{answer.get('idx')}",
                    group=group,
                )
            )
        if unit:
            units.append(unit)
    return units


def _wic(record: dict[str, Any], split: str, where: str) -> list[Unit]:
    source = (
        f"Sentence 1: {require(record, 'sentence1', str, where).strip()}\n"
        f"Sentence 2: {require(record, 'sentence2', str, where).strip()}\n"
        f'Question: Is the word "{require(record, "word", str, where)}" used with the same meaning in both '
        "sentences?\n" + _options(BINARY)
    )
    return _one("wic", split, record.get("idx"), source, BINARY, _bool_label(record, where))


def _wsc(record: dict[str, Any], split: str, where: str) -> list[Unit]:
    target = require(record, "target", dict, where)
    span1 = require(target, "span1_text", str, where).strip()
    span2 = require(target, "span2_text", str, where).strip()
    text = _mark_words(require(record, "text", str, where), require(target, "span2_index", int, where), span2)
    source = (
        f'Text: {text}\nQuestion: In the text above, does the pronoun "*{span2}*" refer to "{span1}"?\n'
        + _options(BINARY)
    )
    return _one("wsc", split, record.get("idx"), source, BINARY, _bool_label(record, where))


def _mark_words(text: str, index: int, span: str) -> str:
    """Put *...* around `span` at word `index` so a repeated pronoun is unambiguous (if it is there)."""
    words = text.split()
    joined = " ".join(words[index : index + len(span.split())])
    if not span or not joined.lower().startswith(span.lower()):
        return text
    marked = f"*{joined[: len(span)]}*{joined[len(span) :]}"
    return " ".join([*words[:index], marked, *words[index + len(span.split()) :]])


def _record(record: dict[str, Any], split: str, where: str) -> list[Unit]:
    passage = require(record, "passage", dict, where)
    text = require(passage, "text", str, where)
    entities = _unique(_span_text(text, e, where) for e in require(passage, "entities", list, where))
    shown = text.replace("@highlight\n", "- ").strip()
    units = []
    for qa in require(record, "qas", list, where):
        answers = _unique(_span_text(text, a, where) for a in qa.get("answers", []))
        if not answers:
            raise DataError(f"{where}: ReCoRD query {qa.get('idx')!r} has no answers")
        source = (
            f"Passage: {shown}\nQuery: {require(qa, 'query', str, where).strip()}\n"
            f"Entities: {', '.join(entities)}\n"
            "Question: Which entity should replace @placeholder in the query?\nAnswer:"
        )
        example_id = f"record-{split}-p{record.get('idx')}-q{qa.get('idx')}"
        units.append([Example(task="record", source=source, target=answers, id=example_id)])
    return units


def _span_text(text: str, item: Any, where: str) -> str:
    # Official files give {start, end (inclusive)[, text]}; the Hub gives plain strings.
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and "text" in item:
        return item["text"]
    if isinstance(item, dict) and isinstance(item.get("start"), int) and isinstance(item.get("end"), int):
        return text[item["start"] : item["end"] + 1]
    raise DataError(
        f"{where}: ReCoRD entity/answer should be a string or a {{start, end}} span, got {short_repr(item)}"
    )


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(s.strip() for s in items if s.strip()))


TASKS: dict[str, SuperGLUETask] = {
    t.name: t
    for t in (
        SuperGLUETask("boolq", "BoolQ", "boolq", BINARY, _boolq),
        SuperGLUETask("cb", "CB", "cb", CB_WORDS, _entailment("cb", CB_WORDS)),
        SuperGLUETask("copa", "COPA", "copa", COPA_WORDS, _copa),
        SuperGLUETask("multirc", "MultiRC", "multirc", BINARY, _multirc),
        SuperGLUETask("record", "ReCoRD", "record", None, _record),
        SuperGLUETask("rte", "RTE", "rte", RTE_WORDS, _entailment("rte", RTE_WORDS)),
        SuperGLUETask("wic", "WiC", "wic", BINARY, _wic),
        SuperGLUETask("wsc", "WSC", "wsc.fixed", BINARY, _wsc),
    )
}


# ------------------------------------------------------------------------------- Hub schema conversion


def records_from_hub_rows(task: str, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the Hub dataset `aps/super_glue` (config `TASKS[task].hub_config`) in the official schema.

    The Hub uses ClassLabel ints (boolq/wic/wsc/multirc 0=False; cb 0=entailment 1=contradiction 2=neutral;
    rte 0=entailment 1=not_entailment), flattens WSC's `target`, and has one row per MultiRC answer option
    and per ReCoRD query; those are grouped back into passages here.
    """
    rows = list(rows)
    if task == "multirc":
        return _multirc_passages(rows)
    if task == "record":
        return _record_passages(rows)
    records = []
    for row in rows:
        record = dict(row)
        label = record.get("label")
        if task in ("boolq", "wic", "wsc"):
            record["label"] = bool(label)
        elif task == "cb":
            record["label"] = CB_WORDS[label]
        elif task == "rte":
            record["label"] = RTE_WORDS[label]
        if task == "wsc":
            keys = ("span1_index", "span2_index", "span1_text", "span2_text")
            record["target"] = {k: record.pop(k) for k in keys}
        records.append(record)
    return records


def _multirc_passages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    passages: dict[Any, dict[str, Any]] = {}
    questions: dict[tuple[Any, Any], dict[str, Any]] = {}
    for row in rows:
        idx = row["idx"]
        passage = passages.setdefault(
            idx["paragraph"],
            {"idx": idx["paragraph"], "passage": {"text": row["paragraph"], "questions": []}},
        )
        key = (idx["paragraph"], idx["question"])
        if key not in questions:
            questions[key] = {"question": row["question"], "idx": idx["question"], "answers": []}
            passage["passage"]["questions"].append(questions[key])
        questions[key]["answers"].append({"text": row["answer"], "idx": idx["answer"], "label": int(row["label"])})
    return list(passages.values())


def _record_passages(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    passages: dict[Any, dict[str, Any]] = {}
    for row in rows:
        idx = row["idx"]
        passage = passages.setdefault(
            idx["passage"],
            {
                "idx": idx["passage"],
                "passage": {"text": row["passage"], "entities": list(row["entities"])},
                "qas": [],
            },
        )
        passage["qas"].append({"query": row["query"], "idx": idx["query"], "answers": list(row["answers"])})
    return list(passages.values())
