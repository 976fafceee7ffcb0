"""SQuAD v1.1 (Rajpurkar et al. 2016), generation with MeZO's prompt, scored by EM and token F1.

Sources: the Hub's `rajpurkar/squad`, or the original `train-v1.1.json` / `dev-v1.1.json`
(`data[].paragraphs[].qas[]`). Every question keeps all its gold answers (duplicates included, as
the Hub does); `meta["answer_starts"]` keeps their character offsets so that a long context can be
cut around the answer (`TaskSpec.fit_prompt`).
"""

from __future__ import annotations

from pathlib import Path

from . import metrics, prompts
from .readers import DataFormatError, check_keys, read_json
from .spec import DiskFormat, Example, HubSource, TaskSpec


def squad_example(qid: str, title: str, context: str, question: str, texts: list[str], starts: list[int]) -> Example:
    return Example(fields={"title": title, "context": context, "question": question}, answers=list(texts),
                   id=qid, meta={"answer_starts": list(starts)})


def parse_squad(path: Path, split: str) -> list[Example]:
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataFormatError(path, None, "expected a SQuAD v1.1 object with a 'data' list")
    out = []
    for i, article in enumerate(doc["data"]):
        where = f"data[{i}]"
        check_keys(article, ("title", "paragraphs"), path, None, where)
        for j, par in enumerate(article["paragraphs"]):
            check_keys(par, ("context", "qas"), path, None, f"{where}.paragraphs[{j}]")
            for k, qa in enumerate(par["qas"]):
                at = f"{where}.paragraphs[{j}].qas[{k}]"
                check_keys(qa, ("id", "question", "answers"), path, None, at)
                if not qa["answers"]:
                    raise DataFormatError(path, None, f"{at} (id {qa['id']}): no answers (SQuAD v1.1 has one or more)")
                for a in qa["answers"]:
                    check_keys(a, ("text", "answer_start"), path, None, f"{at} answer")
                out.append(squad_example(qa["id"], article["title"], par["context"], qa["question"],
                                         [a["text"] for a in qa["answers"]], [a["answer_start"] for a in qa["answers"]]))
    return out


def hub_squad(row: dict, index: int, split: str) -> Example:
    answers = row["answers"]
    if not answers["text"]:
        raise ValueError(f"rajpurkar/squad {split} row {index} (id {row['id']}): no answers")
    return squad_example(row["id"], row["title"], row["context"], row["question"],
                         answers["text"], answers["answer_start"])


SQUAD = TaskSpec(
    name="squad", kind="generation", labels=(), primary_metric="f1",
    text_fields=("title", "context", "question"), metrics=metrics.squad_set,
    disk=(DiskFormat(files={"train": "train-v1.1.json", "validation": "dev-v1.1.json"},
                     subdirs=("squad", "SQuAD", "squad1.1", "squad_v1.1"), parse=parse_squad,
                     describe="SQuAD v1.1 JSON (data[].paragraphs[].qas[])"),),
    hub=HubSource("rajpurkar/squad", "plain_text", {"train": "train", "validation": "validation"}, hub_squad),
    aliases=("squad1", "squad1.1", "squad_v1", "squadv1.1"), template=prompts.squad, long_field="context",
    description="SQuAD v1.1, generation: EM and token F1 (max over gold answers, official normalisation).",
)
