"""SuperGLUE (Wang et al. 2019) tasks of the MeZO protocol: BoolQ, CB, COPA, WiC, WSC, MultiRC, ReCoRD
(RTE lives in `tasks.glue`, which reads its SuperGLUE files too).

Sources: the Hub's `aps/super_glue`, or the original SuperGLUE files (`train.jsonl` / `val.jsonl`,
one JSON object a line). Field names are the Hub's. Original files differ from the Hub in shape
only: labels are true/false or names, WSC nests its spans under `target` (and gets the span-text
repairs of the Hub's `wsc.fixed`, see `fixed_span`), MultiRC nests
questions and answers under `passage`, ReCoRD gives entities as character spans (end inclusive)
and nests its queries under `qas`. Like the Hub, MultiRC yields one example per answer option
and ReCoRD one per query, with entities as the sorted set of their surface strings.
"""

from __future__ import annotations

from pathlib import Path

from . import metrics, prompts
from .readers import DataFormatError, check_keys, label_index, read_jsonl
from .spec import DiskFormat, Example, HubSource, TaskSpec

BOOL = {False: 0, True: 1}
INT01 = {0: 0, 1: 1}
FALSE_TRUE = ("False", "True")
CB_NAMES = ("entailment", "contradiction", "neutral")
FILES = {"train": "train.jsonl", "validation": "val.jsonl"}


def disk(folder: str, parse, describe: str) -> DiskFormat:
    return DiskFormat(files=FILES, subdirs=(f"superglue/{folder}", folder, f"SuperGLUE/{folder}"),
                      parse=parse, describe=f"SuperGLUE {folder} JSON lines ({describe})")


def jsonl_parser(fields: tuple[str, ...], names: tuple[str, ...], label_map: dict | None = None):
    """A flat SuperGLUE file: `fields` are copied, `label` is a name or a `label_map` value."""

    def parse(path: Path, split: str) -> list[Example]:
        out = []
        for line, obj in read_jsonl(path, required=fields + ("label",)):
            for f in fields:
                if not isinstance(obj[f], str):
                    raise DataFormatError(path, line, f"field {f!r} must be a string, got {obj[f]!r}")
            out.append(Example(fields={f: obj[f] for f in fields},
                               label=label_index(obj["label"], names, path, line, label_map),
                               id=str(obj.get("idx", line))))
        return out

    return parse


def hub_flat(fields: tuple[str, ...], num_labels: int, where: str):
    def convert(row: dict, index: int, split: str) -> Example:
        y = row["label"]
        if not (isinstance(y, int) and 0 <= y < num_labels):
            raise ValueError(f"{where} {split} row {index}: label {y!r} outside 0..{num_labels - 1}")
        return Example(fields={f: row[f] for f in fields}, label=y, id=str(row.get("idx", index)))

    return convert


def hub(config: str, convert) -> HubSource:
    return HubSource("aps/super_glue", config, {"train": "train", "validation": "validation"}, convert)


# --- WSC: spans nested under "target" ---------------------------------------------------------


def fixed_span(text: str, span: str, index) -> str:
    """A span text as the Hub's `wsc.fixed` has it. A few spans of the original files are not
    substrings of their text: such a span takes the case of the text's word at `index` for its first
    letter, loses a final "." and has its newlines made spaces (spans found in the text are kept)."""
    if not span or span in text:
        return span
    words = text.split()
    if isinstance(index, int) and 0 <= index < len(words):
        span = (span[0].lower() if words[index][0].islower() else span[0].upper()) + span[1:]
    return span.rstrip(".").replace("\n", " ")


def parse_wsc(path: Path, split: str) -> list[Example]:
    out = []
    for line, obj in read_jsonl(path, required=("text", "target", "label")):
        target, text = obj["target"], obj["text"]
        check_keys(target, ("span1_index", "span1_text", "span2_index", "span2_text"), path, line, "target")
        out.append(Example(
            fields={"text": text, "span1_text": fixed_span(text, target["span1_text"], target["span1_index"]),
                    "span2_text": fixed_span(text, target["span2_text"], target["span2_index"])},
            label=label_index(obj["label"], FALSE_TRUE, path, line, BOOL), id=str(obj.get("idx", line)),
            meta={"span1_index": target["span1_index"], "span2_index": target["span2_index"]}))
    return out


def hub_wsc(row: dict, index: int, split: str) -> Example:
    ex = hub_flat(("text", "span1_text", "span2_text"), 2, "aps/super_glue/wsc.fixed")(row, index, split)
    ex.meta.update(span1_index=row["span1_index"], span2_index=row["span2_index"])
    return ex


# --- MultiRC: one example per answer option ---------------------------------------------------


def parse_multirc(path: Path, split: str) -> list[Example]:
    out = []
    for line, obj in read_jsonl(path, required=("idx", "passage")):
        passage = obj["passage"]
        check_keys(passage, ("text", "questions"), path, line, "passage")
        for q in passage["questions"]:
            check_keys(q, ("question", "answers", "idx"), path, line, "question")
            group = f"{obj['idx']}-{q['idx']}"
            for a in q["answers"]:
                check_keys(a, ("text", "idx", "label"), path, line, "answer")
                out.append(Example(
                    fields={"paragraph": passage["text"], "question": q["question"], "answer": a["text"]},
                    label=label_index(a["label"], FALSE_TRUE, path, line, INT01),
                    id=f"{group}-{a['idx']}", group=group))
    return out


def hub_multirc(row: dict, index: int, split: str) -> Example:
    ex = hub_flat(("paragraph", "question", "answer"), 2, "aps/super_glue/multirc")(row, index, split)
    idx = row["idx"]
    ex.group = f"{idx['paragraph']}-{idx['question']}"
    ex.id = f"{ex.group}-{idx['answer']}"
    return ex


# --- ReCoRD: one example per query; candidates are the passage's entities ---------------------


def record_example(passage: str, query: str, entities, answers, qid: str) -> Example:
    """Raises ValueError when no gold answer is among the entities."""
    entities, answers = sorted(set(entities)), sorted(set(answers))
    gold = next((entities.index(a) for a in answers if a in entities), None)
    if answers and gold is None:
        raise ValueError(f"query {qid}: no gold answer {answers} is among the entities")
    return Example(fields={"passage": passage, "query": query, "entities": entities},
                   label=gold, answers=answers, id=qid, group=qid)


def parse_record(path: Path, split: str) -> list[Example]:
    out = []
    for line, obj in read_jsonl(path, required=("idx", "passage", "qas")):
        passage = obj["passage"]
        check_keys(passage, ("text", "entities"), path, line, "passage")
        text = passage["text"]
        entities = []
        for e in passage["entities"]:
            check_keys(e, ("start", "end"), path, line, "entity")
            entities.append(text[e["start"]:e["end"] + 1])  # end is inclusive
        for qa in obj["qas"]:
            check_keys(qa, ("query", "idx"), path, line, "qas entry")
            answers = [a["text"] for a in qa.get("answers", [])]
            try:
                out.append(record_example(text, qa["query"], entities, answers, f"{obj['idx']}-{qa['idx']}"))
            except ValueError as e:
                raise DataFormatError(path, line, str(e)) from None
    return out


def hub_record(row: dict, index: int, split: str) -> Example:
    idx = row["idx"]
    try:
        return record_example(row["passage"], row["query"], row["entities"], row["answers"],
                              f"{idx['passage']}-{idx['query']}")
    except ValueError as e:
        raise ValueError(f"aps/super_glue/record {split} row {index}: {e}") from None


# --- the tasks --------------------------------------------------------------------------------

BOOLQ = TaskSpec(
    name="boolq", kind="classification", labels=FALSE_TRUE, primary_metric="accuracy",
    text_fields=("question", "passage"), metrics=metrics.accuracy_set,
    disk=(disk("BoolQ", jsonl_parser(("question", "passage"), FALSE_TRUE, BOOL), "question, passage, label true/false"),),
    hub=hub("boolq", hub_flat(("question", "passage"), 2, "aps/super_glue/boolq")),
    encoder_fields=("question", "passage"), template=prompts.boolq, long_field="passage",
    description="Boolean questions (SuperGLUE), accuracy; MeZO's BoolQ prompt (version 2).",
)

CB = TaskSpec(
    name="cb", kind="classification", labels=CB_NAMES, primary_metric="accuracy",
    text_fields=("premise", "hypothesis"), metrics=metrics.accuracy_macro_f1_set,
    disk=(disk("CB", jsonl_parser(("premise", "hypothesis"), CB_NAMES), "premise, hypothesis, label name"),),
    hub=hub("cb", hub_flat(("premise", "hypothesis"), 3, "aps/super_glue/cb")),
    encoder_fields=("premise", "hypothesis"), template=prompts.cb, long_field="premise", mezo_num_dev=100,
    description="CommitmentBank (SuperGLUE): accuracy (what MeZO computes and the paper prints) and macro-F1.",
)

COPA = TaskSpec(
    name="copa", kind="multiple_choice", labels=(), primary_metric="accuracy",
    text_fields=("premise", "choice1", "choice2", "question"), metrics=metrics.accuracy_set,
    disk=(disk("COPA", jsonl_parser(("premise", "choice1", "choice2", "question"), (), INT01),
               "premise, choice1, choice2, question cause/effect, label 0/1"),),
    hub=hub("copa", hub_flat(("premise", "choice1", "choice2", "question"), 2, "aps/super_glue/copa")),
    template=prompts.copa, mezo_num_dev=100,
    description="Choice of Plausible Alternatives (SuperGLUE), accuracy; label = index of the right choice.",
)

WIC = TaskSpec(
    name="wic", kind="classification", labels=FALSE_TRUE, primary_metric="accuracy",
    text_fields=("word", "sentence1", "sentence2"), metrics=metrics.accuracy_set,
    disk=(disk("WiC", jsonl_parser(("word", "sentence1", "sentence2"), FALSE_TRUE, BOOL),
               "word, sentence1, sentence2, label true/false"),),
    hub=hub("wic", hub_flat(("word", "sentence1", "sentence2"), 2, "aps/super_glue/wic")),
    template=prompts.wic,
    description="Words in Context (SuperGLUE), accuracy.",
)

WSC = TaskSpec(
    name="wsc", kind="classification", labels=FALSE_TRUE, primary_metric="accuracy",
    text_fields=("text", "span1_text", "span2_text"), metrics=metrics.accuracy_set,
    disk=(disk("WSC", parse_wsc, "text, target{span1_index, span1_text, span2_index, span2_text}, label"),),
    hub=hub("wsc.fixed", hub_wsc), aliases=("wsc.fixed", "wsc_fixed"),
    template=prompts.wsc, long_field="text",
    description="Winograd Schema Challenge (SuperGLUE wsc.fixed), accuracy (the paper's 'F1' is accuracy).",
)

MULTIRC = TaskSpec(
    name="multirc", kind="classification", labels=FALSE_TRUE, primary_metric="accuracy",
    text_fields=("paragraph", "question", "answer"), metrics=metrics.multirc_set,
    disk=(disk("MultiRC", parse_multirc, "idx, passage{text, questions[{question, idx, answers[{text, idx, label}]}]}"),),
    hub=hub("multirc", hub_multirc), template=prompts.multirc, long_field="paragraph",
    description="Multi-sentence reading comprehension (SuperGLUE), one example per answer option: "
                "accuracy (MeZO), F1a and per-question EM.",
)

RECORD = TaskSpec(
    name="record", kind="multiple_choice", labels=(), primary_metric="accuracy",
    text_fields=("passage", "query"), metrics=metrics.record_set,
    disk=(disk("ReCoRD", parse_record, "idx, passage{text, entities[{start, end}]}, qas[{query, idx, answers}]"),),
    hub=hub("record", hub_record), template=prompts.record, long_field="passage",
    description="Reading comprehension with commonsense reasoning (SuperGLUE): choose the entity for "
                "@placeholder; accuracy (MeZO; the paper's 'F1' column), and official EM / F1.",
)

RTE_JSONL = disk("RTE", jsonl_parser(("premise", "hypothesis"), ("entailment", "not_entailment")),
                 "premise, hypothesis, label entailment/not_entailment")

TASKS = (BOOLQ, CB, COPA, WIC, WSC, MULTIRC, RECORD)
