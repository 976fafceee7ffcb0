"""Metric functions: scikit-learn / scipy for classification and correlation, and our own SQuAD and
DROP answer normalisation (no `evaluate.load`, which needs the Hub for every metric).

Scores are fractions (accuracy 0.9, not 90); correlations lie in [-1, 1].
The per-task metric sets at the bottom take (predictions, examples) and return a dict.
"""

from __future__ import annotations

import operator
import re
import string
from collections import Counter, defaultdict
from typing import Iterable, Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# Classification and regression


def accuracy(preds: Sequence[int], labels: Sequence[int]) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float((preds == labels).mean())


def binary_f1(preds: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (GLUE's MRPC / QQP F1, MultiRC's F1a)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, pos_label=positive, average="binary", zero_division=0))


def macro_f1(preds: Sequence[int], labels: Sequence[int], num_labels: int) -> float:
    """Unweighted mean of per-class F1 over all `num_labels` classes (SuperGLUE's CB F1)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, labels=list(range(num_labels)), average="macro", zero_division=0))


def matthews(preds: Sequence[int], labels: Sequence[int]) -> float:
    """Matthews correlation (CoLA); 0.0 when undefined (a constant prediction or label)."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


def _correlation(fn, preds: Sequence[float], labels: Sequence[float]) -> float:
    preds, labels = np.asarray(preds, dtype=float), np.asarray(labels, dtype=float)
    if len(preds) < 2 or np.all(preds == preds[0]) or np.all(labels == labels[0]):
        return 0.0  # undefined for a constant input; 0.0 (as sklearn does for MCC) keeps "best" comparable
    return float(fn(preds, labels)[0])


def pearson(preds: Sequence[float], labels: Sequence[float]) -> float:
    from scipy.stats import pearsonr

    return _correlation(pearsonr, preds, labels)


def spearman(preds: Sequence[float], labels: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    return _correlation(spearmanr, preds, labels)


# ---------------------------------------------------------------------------------------------
# SQuAD: EM and token F1 after the official v1.1 normalisation


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, squeeze whitespace (SQuAD v1.1)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


_PUNCT = frozenset(string.punctuation)


def squad_exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Token F1 as the official SQuAD v1.1 script (and MeZO) computes it: 0 without a common token,
    so also 0 when both sides normalise to nothing."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(fn, prediction: str, golds: Iterable[str]) -> float:
    golds = list(golds)
    if not golds:
        raise ValueError("no gold answers to score against")
    return max(fn(prediction, g) for g in golds)


# ---------------------------------------------------------------------------------------------
# DROP: the official metric (Dua et al. 2019): answers are bags of normalised tokens, numbers are
# compared as numbers, multi-span answers are aligned span by span (Hungarian matching).


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _drop_normalize_token(token: str) -> str:
    token = token.lower()
    if not _is_number(token):
        token = "".join(ch for ch in token if ch not in _PUNCT)
    if _is_number(token):  # "1,000" -> "1000" -> "1000.0"
        token = str(float(token))
    token = re.sub(r"\b(a|an|the)\b", " ", token)
    return " ".join(token.split())


def drop_normalize(text: str) -> str:
    parts = [_drop_normalize_token(t) for t in re.split(r" |-", text)]
    return " ".join(p for p in parts if p.strip()).strip()


def _bags(answer: str | Sequence[str]) -> tuple[list[str], list[set[str]]]:
    spans = [answer] if isinstance(answer, str) else list(answer)
    normalized = [drop_normalize(s) for s in spans]
    return normalized, [set(n.split()) for n in normalized]


def _bag_f1(pred: set[str], gold: set[str]) -> float:
    inter = len(gold & pred)
    precision = 1.0 if not pred else inter / len(pred)
    recall = 1.0 if not gold else inter / len(gold)
    return 0.0 if precision == 0.0 and recall == 0.0 else 2 * precision * recall / (precision + recall)


def _numbers_match(gold: set[str], pred: set[str]) -> bool:
    gold_numbers = {w for w in gold if _is_number(w)}
    return not gold_numbers or bool(gold_numbers & {w for w in pred if _is_number(w)})


def drop_em_f1(prediction: str | Sequence[str], gold: str | Sequence[str]) -> tuple[float, float]:
    """Official DROP (EM, F1) of one prediction against one gold answer (a span or a list of spans)."""
    from scipy.optimize import linear_sum_assignment

    pred_norm, pred_bags = _bags(prediction)
    gold_norm, gold_bags = _bags(gold)
    em = float(set(pred_norm) == set(gold_norm) and len(pred_norm) == len(gold_norm))
    scores = np.zeros((len(gold_bags), len(pred_bags)))
    for i, g in enumerate(gold_bags):
        for j, p in enumerate(pred_bags):
            if _numbers_match(g, p):
                scores[i, j] = _bag_f1(p, g)
    rows, cols = linear_sum_assignment(-scores)
    best = np.zeros(max(len(gold_bags), len(pred_bags)))
    for r, c in zip(rows, cols):
        best[r] = max(best[r], scores[r, c])
    return em, round(float(np.mean(best)), 2)


def drop_max_em_f1(prediction: str, golds: Sequence[str | Sequence[str]]) -> tuple[float, float]:
    pairs = [drop_em_f1(prediction, g) for g in golds]
    return max(p[0] for p in pairs), max(p[1] for p in pairs)


# ---------------------------------------------------------------------------------------------
# Metric sets, one per kind of task: (predictions, examples) -> {name: value}


def _labels(examples) -> list:
    labels = [ex.label for ex in examples]
    if any(lab is None for lab in labels):
        raise ValueError("an example without a label cannot be scored")
    return labels


def _indices(predictions) -> list[int]:
    """Class / choice indices: ints, numpy integers, or anything else with __index__ (not bools)."""
    out = []
    for p in predictions:
        if isinstance(p, (bool, np.bool_)):
            raise TypeError(f"expected class / choice indices as predictions, got {p!r}")
        try:
            out.append(operator.index(p))
        except TypeError:
            raise TypeError(f"expected class / choice indices as predictions, got {p!r}") from None
    return out


def accuracy_set(predictions, examples) -> dict[str, float]:
    return {"accuracy": accuracy(_indices(predictions), _labels(examples))}


def accuracy_f1_set(predictions, examples) -> dict[str, float]:
    preds, labels = _indices(predictions), _labels(examples)
    return {"accuracy": accuracy(preds, labels), "f1": binary_f1(preds, labels)}


def matthews_set(predictions, examples) -> dict[str, float]:
    return {"matthews_correlation": matthews(_indices(predictions), _labels(examples))}


def correlation_set(predictions, examples) -> dict[str, float]:
    preds = [float(p) for p in predictions]
    labels = [float(x) for x in _labels(examples)]
    return {"pearsonr": pearson(preds, labels), "spearmanr": spearman(preds, labels)}


def accuracy_macro_f1_set(predictions, examples) -> dict[str, float]:
    """CB: accuracy and macro-F1 over its three classes."""
    preds, labels = _indices(predictions), _labels(examples)
    return {"accuracy": accuracy(preds, labels), "f1": macro_f1(preds, labels, num_labels=3)}


def multirc_set(predictions, examples) -> dict[str, float]:
    """MultiRC: accuracy over answer options (what MeZO reports), F1a over all answer options, and
    EM = fraction of questions (`group`) whose every answer option is right."""
    preds, labels = _indices(predictions), _labels(examples)
    by_question: dict[str, list[bool]] = defaultdict(list)
    for ex, p, y in zip(examples, preds, labels):
        by_question[ex.group if ex.group is not None else ex.id].append(p == y)
    em = float(np.mean([all(v) for v in by_question.values()]))
    return {"accuracy": accuracy(preds, labels), "f1a": binary_f1(preds, labels), "em": em}


def _entity(ex, index: int) -> str:
    """The entity a predicted index names; a negative index would silently count from the end."""
    entities = ex.fields["entities"]
    if not 0 <= index < len(entities):
        raise ValueError(f"prediction {index} is not an index into the {len(entities)} entities of example {ex.id!r}")
    return entities[index]


def record_set(predictions, examples) -> dict[str, float]:
    """ReCoRD: accuracy = chosen entity is a gold answer (MeZO), plus the official max-over-golds
    SQuAD-normalised EM and token F1. Predictions: entity indices (or the entity strings)."""
    acc, em, f1 = [], [], []
    for p, ex in zip(predictions, examples):
        entity = p if isinstance(p, str) else _entity(ex, _indices([p])[0])
        acc.append(entity in ex.answers)
        em.append(max_over_golds(squad_exact, entity, ex.answers))
        f1.append(max_over_golds(squad_f1, entity, ex.answers))
    return {"accuracy": float(np.mean(acc)), "em": float(np.mean(em)), "f1": float(np.mean(f1))}


def _strings(predictions) -> list[str]:
    for p in predictions:
        if not isinstance(p, str):
            raise TypeError(f"expected generated strings as predictions, got {p!r}")
    return list(predictions)


def squad_set(predictions, examples) -> dict[str, float]:
    preds = _strings(predictions)
    em = [max_over_golds(squad_exact, p, ex.answers) for p, ex in zip(preds, examples)]
    f1 = [max_over_golds(squad_f1, p, ex.answers) for p, ex in zip(preds, examples)]
    return {"em": float(np.mean(em)), "f1": float(np.mean(f1))}


def drop_set(predictions, examples) -> dict[str, float]:
    """DROP: `f1`/`em` = SQuAD token F1 / EM over the answer strings (how MeZO and the paper score
    DROP); `drop_f1`/`drop_em` = the official DROP metric over the structured answers."""
    scores = squad_set(predictions, examples)
    official = [drop_max_em_f1(p, ex.meta.get("answer_sets") or [[a] for a in ex.answers])
                for p, ex in zip(predictions, examples)]
    scores["drop_em"] = float(np.mean([o[0] for o in official]))
    scores["drop_f1"] = float(np.mean([o[1] for o in official]))
    return scores
