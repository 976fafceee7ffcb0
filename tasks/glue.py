"""GLUE (Wang et al. 2019), as in the paper's Table 1: MNLI (matched; mismatched as `mnli_mm`), SST-2,
MRPC, CoLA, QNLI, QQP, RTE, STS-B.

Sources: the Hub's `nyu-mll/glue`, or a folder in the original GLUE distribution format
(train.tsv / dev.tsv, tab-separated, no quoting; MNLI dev_matched.tsv / dev_mismatched.tsv; CoLA
without a header; STS-B's ten columns; MRPC's `Quality, #1 ID, #2 ID, #1 String, #2 String` with
its UTF-8 byte-order mark). Field names are the Hub's, except RTE's premise/hypothesis (SuperGLUE's
names, which MeZO's RTE prompt uses).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Callable

from . import metrics, prompts
from .readers import DataFormatError, label_index, read_tsv
from .spec import DiskFormat, Example, HubSource, TaskSpec
from .superglue import RTE_JSONL

BINARY = {"0": 0, "1": 1}


def tsv_parser(fields: dict[str, str], label: str, names: tuple[str, ...], *, label_map: dict | None = None,
               regression: bool = False, id_column: str | None = None,
               columns: tuple[str, ...] | None = None) -> Callable[[Path, str], list[Example]]:
    """A parser of a GLUE TSV file: `fields` maps our field names to the file's columns, `label` is
    the label column (values in `label_map`, or label names, or a float for regression);
    `columns` names the columns of a file without a header (CoLA)."""
    required = tuple(fields.values()) + (label,)

    def parse(path: Path, split: str) -> list[Example]:
        rows = read_tsv(path, header=columns is None, columns=columns, required=required)
        out = []
        for line, row in rows:
            value = row[label]
            if regression:
                try:
                    y: int | float = float(value)
                except ValueError:
                    raise DataFormatError(path, line, f"score {value!r} is not a number") from None
                if not math.isfinite(y):  # float() takes "nan" / "inf"; one such label makes every correlation NaN
                    raise DataFormatError(path, line, f"score {value!r} is not a finite number")
            else:
                y = label_index(value, names, path, line, label_map)
            out.append(Example(fields={k: row[c] for k, c in fields.items()}, label=y,
                               id=row[id_column] if id_column else str(line)))
        return out

    return parse


def hub_converter(fields: dict[str, str], names: tuple[str, ...], regression: bool = False,
                  id_key: str | None = "idx", where: str = ""):
    """Converts a Hub row: `fields` maps our names to the row's keys; labels must be in range
    (GLUE's unlabelled test rows carry -1 and are refused)."""

    def convert(row: dict, index: int, split: str) -> Example:
        y = row["label"]
        if regression:
            y = float(y)
        elif not (isinstance(y, int) and 0 <= y < len(names)):
            raise ValueError(f"{where} {split} row {index}: label {y!r} is not an index into {list(names)}")
        return Example(fields={k: row[c] for k, c in fields.items()}, label=y,
                       id=str(row[id_key]) if id_key and id_key in row else str(index))

    return convert


def glue_task(name: str, config: str, folder: str, *, kind: str = "classification", names: tuple[str, ...] = (),
              primary: str, metric_set, fields: dict[str, str], hub_fields: dict[str, str] | None = None,
              parse, pair: tuple[str, str | None], dev_file: str = "dev.tsv", hub_dev: str = "validation",
              describe: str, **extra) -> TaskSpec:
    return TaskSpec(
        name=name, kind=kind, labels=names, primary_metric=primary, text_fields=tuple(fields),
        metrics=metric_set, encoder_fields=pair,
        disk=(DiskFormat(files={"train": "train.tsv", "validation": dev_file},
                         subdirs=(f"glue/{folder}", folder, f"GLUE/{folder}", f"glue_data/{folder}"),
                         parse=parse, describe=describe),),
        hub=HubSource("nyu-mll/glue", config, {"train": "train", "validation": hub_dev},
                      hub_converter(hub_fields or {k: k for k in fields}, names, kind == "regression",
                                    where=f"nyu-mll/glue/{config}")),
        **extra,
    )


NLI3 = ("entailment", "neutral", "contradiction")
NLI2 = ("entailment", "not_entailment")
MNLI_COLUMNS = {"premise": "sentence1", "hypothesis": "sentence2"}
MNLI_DESCRIBE = "GLUE MNLI TSV (header incl. pairID, sentence1, sentence2, gold_label)"

SST2 = glue_task(
    "sst2", "sst2", "SST-2", names=("negative", "positive"), primary="accuracy", metric_set=metrics.accuracy_set,
    fields={"sentence": "sentence"}, pair=("sentence", None),
    parse=tsv_parser({"sentence": "sentence"}, "label", ("negative", "positive"), label_map=BINARY),
    describe="GLUE SST-2 TSV (header: sentence, label)",
    aliases=("sst-2", "sst"), template=prompts.sst2, long_field="sentence",
    description="Stanford Sentiment Treebank, binary (GLUE); decoder: MeZO's '<sentence> It was great/terrible'.",
)

COLA = glue_task(
    "cola", "cola", "CoLA", names=("unacceptable", "acceptable"), primary="matthews_correlation",
    metric_set=metrics.matthews_set, fields={"sentence": "sentence"}, pair=("sentence", None),
    parse=tsv_parser({"sentence": "sentence"}, "label", ("unacceptable", "acceptable"), label_map=BINARY,
                     columns=("source", "label", "original_label", "sentence")),
    describe="GLUE CoLA TSV without header (source, label, original mark, sentence)",
    description="Corpus of Linguistic Acceptability (GLUE), Matthews correlation.",
)

MRPC = glue_task(
    "mrpc", "mrpc", "MRPC", names=("not_equivalent", "equivalent"), primary="f1", metric_set=metrics.accuracy_f1_set,
    fields={"sentence1": "#1 String", "sentence2": "#2 String"},
    hub_fields={"sentence1": "sentence1", "sentence2": "sentence2"}, pair=("sentence1", "sentence2"),
    parse=tsv_parser({"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality",
                     ("not_equivalent", "equivalent"), label_map=BINARY),
    describe="GLUE MRPC TSV (header: Quality, #1 ID, #2 ID, #1 String, #2 String)",
    description="Microsoft Research Paraphrase Corpus (GLUE), F1 of 'equivalent' (and accuracy).",
)

QQP = glue_task(
    "qqp", "qqp", "QQP", names=("not_duplicate", "duplicate"), primary="f1", metric_set=metrics.accuracy_f1_set,
    fields={"question1": "question1", "question2": "question2"}, pair=("question1", "question2"),
    parse=tsv_parser({"question1": "question1", "question2": "question2"}, "is_duplicate",
                     ("not_duplicate", "duplicate"), label_map=BINARY, id_column="id"),
    describe="GLUE QQP TSV (header: id, qid1, qid2, question1, question2, is_duplicate)",
    description="Quora Question Pairs (GLUE), F1 of 'duplicate' (and accuracy).",
)

STSB = glue_task(
    "stsb", "stsb", "STS-B", kind="regression", primary="spearmanr", metric_set=metrics.correlation_set,
    fields={"sentence1": "sentence1", "sentence2": "sentence2"}, pair=("sentence1", "sentence2"),
    parse=tsv_parser({"sentence1": "sentence1", "sentence2": "sentence2"}, "score", (), regression=True,
                     id_column="index"),
    describe="GLUE STS-B TSV (10 columns: index, genre, filename, year, old_index, source1, source2, "
             "sentence1, sentence2, score)",
    aliases=("sts-b", "sts"),
    description="Semantic Textual Similarity Benchmark (GLUE), regression 0-5, Spearman (and Pearson).",
)

MNLI = glue_task(
    "mnli", "mnli", "MNLI", names=NLI3, primary="accuracy", metric_set=metrics.accuracy_set,
    fields=MNLI_COLUMNS, hub_fields={"premise": "premise", "hypothesis": "hypothesis"},
    pair=("premise", "hypothesis"),
    parse=tsv_parser(MNLI_COLUMNS, "gold_label", NLI3, id_column="pairID"),
    dev_file="dev_matched.tsv", hub_dev="validation_matched", describe=MNLI_DESCRIBE,
    aliases=("mnli-m", "mnli_matched", "mnli-matched"),
    description="Multi-Genre NLI (GLUE), accuracy on the matched dev set.",
)

MNLI_MM = glue_task(
    "mnli_mm", "mnli", "MNLI", names=NLI3, primary="accuracy", metric_set=metrics.accuracy_set,
    fields=MNLI_COLUMNS, hub_fields={"premise": "premise", "hypothesis": "hypothesis"},
    pair=("premise", "hypothesis"),
    parse=tsv_parser(MNLI_COLUMNS, "gold_label", NLI3, id_column="pairID"),
    dev_file="dev_mismatched.tsv", hub_dev="validation_mismatched", describe=MNLI_DESCRIBE,
    aliases=("mnli-mm", "mnli_mismatched", "mnli-mismatched"),
    description="MNLI trained on the same train set, evaluated on the mismatched dev set.",
)

QNLI = glue_task(
    "qnli", "qnli", "QNLI", names=NLI2, primary="accuracy", metric_set=metrics.accuracy_set,
    fields={"question": "question", "sentence": "sentence"}, pair=("question", "sentence"),
    parse=tsv_parser({"question": "question", "sentence": "sentence"}, "label", NLI2, id_column="index"),
    describe="GLUE QNLI TSV (header: index, question, sentence, label)",
    description="Question NLI from SQuAD (GLUE), accuracy.",
)

RTE = glue_task(
    "rte", "rte", "RTE", names=NLI2, primary="accuracy", metric_set=metrics.accuracy_set,
    fields={"premise": "sentence1", "hypothesis": "sentence2"},
    hub_fields={"premise": "sentence1", "hypothesis": "sentence2"}, pair=("premise", "hypothesis"),
    parse=tsv_parser({"premise": "sentence1", "hypothesis": "sentence2"}, "label", NLI2, id_column="index"),
    describe="GLUE RTE TSV (header: index, sentence1, sentence2, label)",
    template=prompts.rte, long_field="premise",
    description="Recognising Textual Entailment (GLUE = SuperGLUE RTE); decoder: MeZO's RTE prompt.",
)

RTE = replace(RTE, disk=RTE.disk + (RTE_JSONL,))  # SuperGLUE's RTE files hold the same data

TASKS = (MNLI, MNLI_MM, SST2, MRPC, COLA, QNLI, QQP, RTE, STSB)
