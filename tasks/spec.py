"""The data types every task shares: an example, a rendered decoder prompt, and a task's description.

A task is data (`TaskSpec`): its kind, labels, fields, how to build encoder inputs and decoder prompts,
how to score predictions, and where its files live. Loading and sampling live elsewhere
(`tasks.loading`, `tasks.sampling`), metrics in `tasks.metrics`, MeZO's prompts in `tasks.prompts`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

KINDS = ("classification", "regression", "multiple_choice", "generation")


@dataclass
class Example:
    """One row of a benchmark, in canonical field names (the Hub's names where the Hub has them).

    fields: raw text fields (and, for ReCoRD, the list of candidate `entities`).
    label: class index (classification; the correct choice for multiple choice), float (regression)
        or None (generation).
    answers: gold answer strings (generation; ReCoRD's correct entities).
    id: the row's id in its source; group: rows scored together (MultiRC question, ReCoRD query).
    meta: anything else a task needs (SQuAD `answer_starts`, DROP `answer_sets`, source location).
    """

    fields: dict[str, Any]
    label: int | float | None = None
    answers: list[str] = field(default_factory=list)
    id: str | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prompted:
    """A decoder prompt (MeZO style).

    Classification / multiple choice: each candidate is the continuation scored after `context`
    (e.g. " great" / " terrible"); `gold` is the index of the right one.
    Generation: `candidates` is None, `answers` holds the gold answers; the training continuation is
    `target` (MeZO trains on " " + answers[0] + "\\n"; decoding stops at the newline).
    """

    context: str
    candidates: list[str] | None
    gold: int | None
    answers: list[str] | None = None

    @property
    def target(self) -> str | None:
        """The continuation to train on with an LM loss (None when there is no gold)."""
        if self.candidates is not None:
            return None if self.gold is None else self.candidates[self.gold]
        if not self.answers:
            return None
        return " " + self.answers[0] + "\n"


@dataclass(frozen=True, eq=False)
class DiskFormat:
    """Where a task's original-format files live and how to parse them.

    files: split name ("train", "validation", ...) -> file name; subdirs: folders under `data_dir`
    searched after `data_dir` itself (e.g. "glue/SST-2"); parse(path, split) -> list[Example].
    describe: the format in words, for error messages.
    """

    files: dict[str, str]
    subdirs: tuple[str, ...]
    parse: Callable[[Any, str], list[Example]]
    describe: str


@dataclass(frozen=True, eq=False)
class HubSource:
    """A Hugging Face Hub dataset: `datasets.load_dataset(path, config, split=splits[split])`,
    each row converted by `convert(row, index, split)` (None drops the row, with a warning)."""

    path: str
    config: str | None
    splits: dict[str, str]
    convert: Callable[[dict, int, str], Optional[Example]]


@dataclass(frozen=True, eq=False)  # compared and hashed by identity
class TaskSpec:
    """Everything the runner needs to know about one benchmark task.

    `kind` is the kind under the decoder (MeZO) protocol for tasks that have one; GLUE-only tasks
    are classification or regression. Adding a task is adding one `TaskSpec` to the registry.
    """

    name: str
    kind: str
    labels: tuple[str, ...]  # label names by index (see `label_names`)
    primary_metric: str
    text_fields: tuple[str, ...]
    metrics: Callable[[Sequence, Sequence[Example]], dict[str, float]]
    disk: tuple[DiskFormat, ...]
    hub: HubSource | None = None
    aliases: tuple[str, ...] = ()
    encoder_fields: tuple[str, str | None] | None = None
    template: Callable[[Example], Prompted] | None = None
    long_field: str | None = None  # the field shortened when a prompt is too long
    mezo_num_dev: int = 500  # MeZO's dev size (100 for the small CB and COPA)
    fetch: Callable[[Any], Any] | None = None  # downloads the files when there is no Hub source
    description: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")

    # -- description -------------------------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        """Class names by label index; empty for regression, multiple choice and generation."""
        return list(self.labels)

    @property
    def num_labels(self) -> int:
        return 1 if self.kind == "regression" else len(self.labels)

    @property
    def supports_encoder(self) -> bool:
        return self.encoder_fields is not None

    @property
    def supports_decoder(self) -> bool:
        return self.template is not None

    # -- model inputs --------------------------------------------------------------------------
    def encoder_inputs(self, ex: Example) -> tuple[str, str | None]:
        """The text (pair) to give an encoder tokenizer."""
        if self.encoder_fields is None:
            raise ValueError(f"task {self.name!r} has no encoder (sequence classification) form")
        first, second = self.encoder_fields
        return ex.fields[first], (ex.fields[second] if second is not None else None)

    def encoder_label(self, ex: Example) -> int | float:
        if ex.label is None:
            raise ValueError(f"task {self.name!r}: example {ex.id!r} has no label")
        return float(ex.label) if self.kind == "regression" else int(ex.label)

    def prompt(self, ex: Example) -> Prompted:
        """The MeZO prompt of an example (see `tasks.prompts`)."""
        if self.template is None:
            raise ValueError(f"task {self.name!r} has no decoder prompt (MeZO covers no such task)")
        return self.template(ex)

    def fit_prompt(self, ex: Example, max_tokens: int, count_tokens: Callable[[str], int] | None = None,
                   keep_answer: bool = True) -> Prompted:
        """`prompt(ex)`, with the task's long field shortened until context + the longest
        continuation fits `max_tokens` (counted by `count_tokens`, default: whitespace words).
        For extractive QA the kept window holds the gold answer where possible (`keep_answer`)."""
        from .prompts import fit_prompt

        return fit_prompt(self, ex, max_tokens, count_tokens, keep_answer)

    # -- scoring -------------------------------------------------------------------------------
    def compute_metrics(self, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
        """Scores as fractions (correlations in [-1, 1]); always includes `primary_metric`."""
        if len(predictions) != len(examples):
            raise ValueError(f"task {self.name!r}: {len(predictions)} predictions for {len(examples)} examples")
        if not examples:
            raise ValueError(f"task {self.name!r}: no examples to score")
        scores = self.metrics(predictions, examples)
        assert self.primary_metric in scores, (self.name, scores)
        return scores
