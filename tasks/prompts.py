"""Decoder prompts: the templates of MeZO (Malladi et al. 2023, princeton-nlp/MeZO,
`large_models/templates.py`, MIT licence), as the pair MeZO uses, `encode` (the context) and
`verbalize` (context + one candidate).

Like MeZO's `encode_prompt`, the context is `encode(ex).strip(" ")` and a candidate's continuation
is what `verbalize(ex, c).strip(" ")` adds after it; e.g. SST-2 "<sentence> It was" + " great",
CB "...Yes, No, or Maybe?\\n" + "Maybe", COPA "<premise> because" + " <choice>".
Templates per task (MeZO's choice where it has versions): SST-2 `SST2Template`, RTE `RTETemplate`,
CB `CBTemplate`, BoolQ `BoolQTemplateV3` (MeZO's default, version 2), WSC `WSCTemplate`,
WiC `WICTemplate`, MultiRC `MultiRCTemplate`, COPA `CopaTemplate`, ReCoRD `ReCoRDTemplateGPT3`,
SQuAD `SQuADv2Template`, DROP `DROPTemplate`.
"""

from __future__ import annotations

import re
from typing import Callable

from .spec import Example, Prompted

# Verbalisers by label index (our label order; MeZO's words).
SST2_WORDS = {0: "terrible", 1: "great"}  # negative, positive
RTE_WORDS = {0: "Yes", 1: "No"}  # entailment, not_entailment
CB_WORDS = {0: "Yes", 1: "No", 2: "Maybe"}  # entailment, contradiction, neutral
NO_YES = {0: "No", 1: "Yes"}  # False, True (BoolQ, WSC, WiC, MultiRC)


def _classification(encode: Callable[[Example], str], words: dict[int, str]) -> Callable[[Example], Prompted]:
    """A template whose verbalisation is `encode(ex) + word` (every MeZO classification template)."""

    def render(ex: Example) -> Prompted:
        raw = encode(ex)
        return _prompted(raw, [raw + words[i] for i in sorted(words)], ex.label)

    return render


def _prompted(encoded: str, verbalized: list[str], gold) -> Prompted:
    context = encoded.strip(" ")
    candidates = []
    for full in verbalized:
        full = full.strip(" ")
        if not full.startswith(context):  # cannot happen with the templates below
            raise AssertionError(f"verbalisation {full!r} does not extend the context {context!r}")
        candidates.append(full[len(context):])
    return Prompted(context=context, candidates=candidates, gold=None if gold is None else int(gold))


# --- classification ---------------------------------------------------------------------------


def sst2_encode(ex: Example) -> str:
    return f"{ex.fields['sentence'].strip()} It was "  # MeZO: f"{text} It was" + f" {word}"


def rte_encode(ex: Example) -> str:
    f = ex.fields
    return f"{f['premise']}\nDoes this mean that \"{f['hypothesis']}\" is true? Yes or No?\n"


def cb_encode(ex: Example) -> str:
    f = ex.fields
    return f"Suppose {f['premise']} Can we infer that \"{f['hypothesis']}\"? Yes, No, or Maybe?\n"


def boolq_encode(ex: Example) -> str:
    question = ex.fields["question"]
    if not question.endswith("?"):
        question = question + "?"
    question = question[:1].upper() + question[1:]  # MeZO: question[0].upper() (fails on "")
    return f"{ex.fields['passage']} {question}\n"


def wsc_encode(ex: Example) -> str:
    f = ex.fields
    return (f"{f['text']}\nIn the previous sentence, does the pronoun \"{f['span2_text'].lower()}\" "
            f"refer to {f['span1_text']}? Yes or No?\n")


def wic_encode(ex: Example) -> str:
    f = ex.fields
    return (f"Does the word \"{f['word']}\" have the same meaning in these two sentences? Yes, No?\n"
            f"{f['sentence1']}\n{f['sentence2']}\n")


def multirc_encode(ex: Example) -> str:
    f = ex.fields
    return (f"{f['paragraph']}\nQuestion: {f['question']}\n"
            f"I found this answer \"{f['answer']}\". Is that correct? Yes or No?\n")


sst2 = _classification(sst2_encode, SST2_WORDS)
rte = _classification(rte_encode, RTE_WORDS)
cb = _classification(cb_encode, CB_WORDS)
boolq = _classification(boolq_encode, NO_YES)
wsc = _classification(wsc_encode, NO_YES)
wic = _classification(wic_encode, NO_YES)
multirc = _classification(multirc_encode, NO_YES)

# --- multiple choice --------------------------------------------------------------------------


def _copa_capitalize(choice: str) -> str:
    words = choice.split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


def copa(ex: Example) -> Prompted:
    """MeZO `CopaTemplate` (capitalization "correct"): "<premise without final .> because|so <choice>"."""
    f = ex.fields
    premise = f["premise"].rstrip()
    if premise.endswith("."):
        premise = premise[:-1]
    if f["question"] not in ("cause", "effect"):
        raise ValueError(f"COPA question must be 'cause' or 'effect', got {f['question']!r}")
    encoded = premise + (" because " if f["question"] == "cause" else " so ")
    return _prompted(encoded, [encoded + _copa_capitalize(c) for c in (f["choice1"], f["choice2"])], ex.label)


def record(ex: Example) -> Prompted:
    """MeZO `ReCoRDTemplateGPT3`: the passage with "@highlight" lines as "- " bullets, then one more
    bullet: the query with @placeholder filled by each candidate entity."""
    passage = ex.fields["passage"].replace("@highlight\n", "- ")
    encoded = f"{passage}\n-"
    query = ex.fields["query"]
    verbalized = [f"{passage}\n- {query.replace('@placeholder', e)}" for e in ex.fields["entities"]]
    return _prompted(encoded, verbalized, ex.label)


# --- generation -------------------------------------------------------------------------------


def squad(ex: Example) -> Prompted:
    """MeZO `SQuADv2Template` (used for SQuAD v1.1)."""
    f = ex.fields
    context = f"Title: {f['title']}\nContext: {f['context']}\nQuestion: {f['question'].strip()}\nAnswer:"
    return Prompted(context=context.strip(" "), candidates=None, gold=None, answers=list(ex.answers))


def drop(ex: Example) -> Prompted:
    """MeZO `DROPTemplate`."""
    f = ex.fields
    context = f"Passage: {f['passage']}\nQuestion: {f['question'].strip()}\nAnswer:"
    return Prompted(context=context.strip(" "), candidates=None, gold=None, answers=list(ex.answers))


# --- fitting a prompt into a token budget -----------------------------------------------------


def _answer_char_span(ex: Example, text: str) -> tuple[int, int] | None:
    """Where the first locatable gold answer sits in `text` (SQuAD's answer_start, else a search).
    The search prefers a whole-word occurrence: DROP's "3" must not be found inside "1932"."""
    starts = ex.meta.get("answer_starts") or []
    for answer, start in zip(ex.answers, starts):
        if start is not None and start >= 0 and text[start:start + len(answer)] == answer:
            return start, start + len(answer)
    answers = [a for a in ex.answers if a]
    for answer in answers:
        match = re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text)
        if match:
            return match.span()
    for answer in answers:
        pos = text.find(answer)
        if pos >= 0:
            return pos, pos + len(answer)
    return None


def fit_prompt(spec, ex: Example, max_tokens: int, count_tokens: Callable[[str], int] | None = None,
               keep_answer: bool = True) -> Prompted:
    """`spec.prompt(ex)` with `spec.long_field` cut to a window of whole words so that the context
    plus its longest continuation counts at most `max_tokens`. The window starts at the field's
    beginning, or, with `keep_answer` and a gold answer found in the field, is centred on it.
    If even an empty field does not fit, the shortest prompt is returned (the caller truncates)."""
    count = count_tokens or (lambda s: len(s.split()))

    def size(p: Prompted) -> int:
        tails = p.candidates if p.candidates is not None else [p.target or ""]
        return count(p.context + max(tails, key=len, default=""))

    full = spec.prompt(ex)
    field = spec.long_field
    if field is None or size(full) <= max_tokens:
        return full
    text = ex.fields[field]
    words = [m.span() for m in re.finditer(r"\S+", text)]
    answer = _answer_char_span(ex, text) if keep_answer else None
    if answer is not None:
        first = next((i for i, (s, e) in enumerate(words) if e > answer[0]), len(words) - 1)
        last = next((i for i, (s, e) in enumerate(words) if e >= answer[1]), len(words) - 1)
    else:
        first = last = 0

    def window(k: int) -> Example:
        if k <= 0:
            piece = ""
        else:
            span_len = last - first + 1
            start = first - max(0, (k - span_len) // 2) if k >= span_len else first
            start = max(0, min(start, len(words) - k))
            piece = text[words[start][0]:words[min(start + k, len(words)) - 1][1]]
        return Example(fields={**ex.fields, field: piece}, label=ex.label, answers=ex.answers,
                       id=ex.id, group=ex.group, meta=ex.meta)

    lo, hi = 0, len(words)  # largest k in [lo, hi) that fits; k=0 is the fallback
    while lo < hi - 1:
        mid = (lo + hi) // 2
        if size(spec.prompt(window(mid))) <= max_tokens:
            lo = mid
        else:
            hi = mid
    return spec.prompt(window(lo))
