"""DROP (Dua et al. 2019), generation with MeZO's prompt.

Sources: the Hub's `ucinlp/drop`, or the original `drop_dataset_train.json` / `drop_dataset_dev.json`
({passage_id: {passage, qa_pairs: [{question, query_id, answer, validated_answers}]}}).

Gold strings follow the Hub (and so MeZO): train uses the `answer`, validation its
`validated_answers`; a number is its digits, a date "day month year" (blanks left out), and each
span of a multi-span answer is a gold string of its own. A question whose answer mixes kinds or
is empty has no such strings: the Hub drops it (9 train, 1 validation question) and so do we, with
a warning naming them. `meta["answer_sets"]` holds the structured answers ([answer] +
validated_answers, each a list of spans) for the official DROP metric; rows from the Hub, which
has lost that structure, score each gold string as an answer of its own.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from . import metrics, prompts
from .readers import DataFormatError, check_keys, read_json
from .spec import DiskFormat, Example, HubSource, TaskSpec


def _date(d: dict) -> str:
    return " ".join([d.get("day", ""), d.get("month", ""), d.get("year", "")]).strip()


def answer_strings(answers: list[dict]) -> list[str] | None:
    """The Hub's flattening of a list of DROP answer objects; None where the Hub drops the question."""
    out = []
    for a in answers:
        number, date, spans = str(a.get("number", "")), _date(a.get("date") or {}), list(a.get("spans") or [])
        if sum(bool(x) for x in (number, date, spans)) > 1:
            return None  # both number and date/text: the Hub's AnswerParsingError
        out.extend([number] if number else [date] if date else spans)
    return out or None


def answer_set(a: dict) -> list[str]:
    """One answer as the official DROP evaluation reads it: number, else spans, else date."""
    number = str(a.get("number", ""))
    if number:
        return [number]
    if a.get("spans"):
        return list(a["spans"])
    return [_date(a.get("date") or {})]


def parse_drop(path: Path, split: str) -> list[Example]:
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataFormatError(path, None, "expected a JSON object {passage_id: {passage, qa_pairs}}")
    key = "answer" if split == "train" else "validated_answers"
    out, dropped = [], []
    for pid, section in doc.items():
        check_keys(section, ("passage", "qa_pairs"), path, None, f"passage {pid}")
        for k, qa in enumerate(section["qa_pairs"]):
            check_keys(qa, ("question", "query_id", key), path, None, f"passage {pid} qa_pairs[{k}]")
            gold = answer_strings([qa[key]] if key == "answer" else qa[key])
            if gold is None:
                dropped.append(qa["query_id"])
                continue
            sets = []
            for a in ([qa["answer"]] if "answer" in qa else []) + list(qa.get("validated_answers") or []):
                s = answer_set(a)
                if any(x.strip() for x in s) and s not in sets:
                    sets.append(s)
            out.append(Example(fields={"passage": section["passage"], "question": qa["question"]},
                               answers=gold, id=qa["query_id"], group=pid, meta={"answer_sets": sets}))
    if dropped:
        warnings.warn(f"{path}: dropped {len(dropped)} question(s) whose answer mixes number/date/span "
                      f"or is empty, as the Hub's DROP does: {dropped}", stacklevel=2)
    return out


def hub_drop(row: dict, index: int, split: str) -> Example:
    spans = list(row["answers_spans"]["spans"])
    if not spans:
        raise ValueError(f"ucinlp/drop {split} row {index} (query {row['query_id']}): no answer")
    return Example(fields={"passage": row["passage"], "question": row["question"]}, answers=spans,
                   id=row["query_id"], group=row["section_id"])


DROP = TaskSpec(
    name="drop", kind="generation", labels=(), primary_metric="f1",
    text_fields=("passage", "question"), metrics=metrics.drop_set,
    disk=(DiskFormat(files={"train": "drop_dataset_train.json", "validation": "drop_dataset_dev.json"},
                     subdirs=("drop", "drop_dataset", "DROP"), parse=parse_drop,
                     describe="DROP JSON ({passage_id: {passage, qa_pairs}})"),),
    hub=HubSource("ucinlp/drop", None, {"train": "train", "validation": "validation"}, hub_drop),
    template=prompts.drop, long_field="passage",
    description="DROP, generation: SQuAD token F1 (the paper's score, `f1`) and EM, plus the official "
                "DROP EM/F1 (`drop_em`, `drop_f1`).",
)
