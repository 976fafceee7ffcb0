import math

import pytest

from tasks import Example, get_task
from tasks import metrics as M


def exs(labels, **kw):
    return [Example(fields={}, label=y, **kw) for y in labels]


# --- classification / regression, hand-computed ----------------------------------------------


def test_accuracy_and_binary_f1():
    preds, labels = [1, 0, 1, 1], [1, 1, 1, 0]
    assert M.accuracy(preds, labels) == 0.5
    # TP=2, FP=1, FN=1 -> P = R = 2/3
    assert M.binary_f1(preds, labels) == pytest.approx(2 / 3)
    assert get_task("mrpc").compute_metrics(preds, exs(labels)) == pytest.approx({"accuracy": 0.5, "f1": 2 / 3})
    assert get_task("qqp").compute_metrics([0, 0], exs([1, 0]))["f1"] == 0.0


def test_matthews_correlation():
    # TP=2 TN=0 FP=1 FN=1: (0 - 1) / sqrt(3*3*1*1)
    assert M.matthews([1, 0, 1, 1], [1, 1, 1, 0]) == pytest.approx(-1 / 3)
    # TP=2 TN=2 FP=1 FN=0: 4 / sqrt(3*2*3*2)
    assert M.matthews([1, 1, 0, 0, 1], [1, 0, 0, 0, 1]) == pytest.approx(2 / 3)
    assert M.matthews([1, 1, 1], [1, 0, 1]) == 0.0  # undefined -> 0
    assert get_task("cola").compute_metrics([1, 1, 0, 0, 1], exs([1, 0, 0, 0, 1])) == pytest.approx(
        {"matthews_correlation": 2 / 3})


def test_spearman_and_pearson():
    # ranks of [5, 6, 7, 8, 7] are [1, 2, 3.5, 5, 3.5]: r = 8 / sqrt(10 * 9.5)
    assert M.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    # monotone but not linear: Spearman 1, Pearson 25 / sqrt(5 * 129)
    assert M.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert M.pearson([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(25 / math.sqrt(645))
    assert M.spearman([2, 2, 2], [1, 2, 3]) == 0.0  # constant prediction: undefined -> 0
    scores = get_task("stsb").compute_metrics([1.0, 2.0, 3.0, 4.0], exs([1.0, 4.0, 9.0, 16.0]))
    assert scores == pytest.approx({"pearsonr": 25 / math.sqrt(645), "spearmanr": 1.0})


def test_cb_macro_f1():
    preds, labels = [0, 0, 1, 2, 1, 0], [0, 1, 1, 2, 2, 0]
    # per-class F1: 0.8, 0.5, 2/3
    expected = (0.8 + 0.5 + 2 / 3) / 3
    assert M.macro_f1(preds, labels, 3) == pytest.approx(expected)
    assert get_task("cb").compute_metrics(preds, exs(labels)) == pytest.approx({"accuracy": 4 / 6, "f1": expected})


def test_multirc_f1a_and_em():
    examples = [Example(fields={}, label=y, group=g) for y, g in
                [(1, "q1"), (0, "q1"), (1, "q1"), (1, "q2"), (0, "q2")]]
    scores = get_task("multirc").compute_metrics([1, 0, 0, 1, 0], examples)
    # TP=2 FP=0 FN=1 -> F1a = 0.8; q1 has a wrong option, q2 none -> EM 0.5
    assert scores == pytest.approx({"accuracy": 0.8, "f1a": 0.8, "em": 0.5})


def test_record_accuracy_em_f1():
    a = Example(fields={"entities": ["Barcelona", "Lionel Messi", "Messi", "Spain"]}, label=1,
                answers=["Lionel Messi", "Messi"])
    b = Example(fields={"entities": ["Real Madrid", "Spain", "the Spain team"]}, label=1, answers=["Spain"])
    scores = get_task("record").compute_metrics([2, 2], [a, b])
    # a: "Messi" is a gold answer; b: "the Spain team" vs "Spain": EM 0, F1 = 2 * (1/2 * 1) / 1.5
    assert scores == pytest.approx({"accuracy": 0.5, "em": 0.5, "f1": (1 + 2 / 3) / 2})
    assert get_task("record").compute_metrics(["Spain"], [b])["accuracy"] == 1.0


def test_prediction_type_and_length_are_checked():
    with pytest.raises(ValueError, match="2 predictions for 1"):
        get_task("sst2").compute_metrics([0, 1], exs([0]))
    with pytest.raises(TypeError):
        get_task("sst2").compute_metrics(["great"], exs([1]))
    with pytest.raises(TypeError):
        get_task("squad").compute_metrics([3], [Example(fields={}, answers=["3"])])
    with pytest.raises(TypeError):
        get_task("sst2").compute_metrics([True], exs([1]))
    import numpy as np

    assert get_task("sst2").compute_metrics(np.array([1, 0]), exs([1, 1])) == {"accuracy": 0.5}
    with pytest.raises(ValueError, match="no examples"):
        get_task("sst2").compute_metrics([], [])


# --- SQuAD normalisation, EM and token F1 ------------------------------------------------------


@pytest.mark.parametrize("raw,normalized", [
    ("The  Denver Broncos!", "denver broncos"),
    ("A, an; THE", ""),
    ("an apple", "apple"),
    ("Theater of the Absurd", "theater of absurd"),
    ("  Santa\tClara,\nCalifornia ", "santa clara california"),
    ("Levi's Stadium", "levis stadium"),
    ("24–10", "24–10"),  # an en dash is not ASCII punctuation
    ("Café Crème", "café crème"),
    ("1,000.5", "10005"),
])
def test_squad_normalisation(raw, normalized):
    assert M.normalize_answer(raw) == normalized


def test_squad_em_and_f1():
    assert M.squad_exact("The Denver Broncos.", "denver broncos") == 1.0
    # pred [cat, sat], gold [cat, sat, down]: P = 1, R = 2/3
    assert M.squad_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert M.squad_f1("Denver", "Broncos") == 0.0
    assert M.squad_f1("", "the") == 0.0  # as the official v1.1 script: no common token -> 0
    assert M.max_over_golds(M.squad_f1, "Denver", ["Denver Broncos", "Broncos"]) == pytest.approx(2 / 3)
    examples = [Example(fields={}, answers=["Denver Broncos", "The Denver Broncos"]),
                Example(fields={}, answers=["Levi's Stadium"])]
    scores = get_task("squad").compute_metrics(["the Denver Broncos", "Stadium"], examples)
    assert scores == pytest.approx({"em": 0.5, "f1": (1 + 2 / 3) / 2})


# --- DROP ---------------------------------------------------------------------------------------


def test_drop_official_metric():
    assert M.drop_em_f1("3,500", ["3500"]) == (1.0, 1.0)  # numbers compare as numbers
    assert M.drop_em_f1("4 games", "3 games") == (0.0, 0.0)  # a wrong number scores nothing
    assert M.drop_em_f1("Tom Hill", ["Tom Hill", "Ann Lee"]) == (0.0, 0.5)  # one of two spans
    # one predicted bag {ann, lee, and, tom, hill} matched to one gold span: F1 4/7, averaged over 2
    assert M.drop_em_f1("Ann Lee and Tom Hill", ["Tom Hill", "Ann Lee"]) == (0.0, 0.29)
    assert M.drop_em_f1(["Ann Lee", "Tom Hill"], ["Tom Hill", "Ann Lee"]) == (1.0, 1.0)
    assert M.drop_max_em_f1("May 2008", [["4 May 2008"], ["May 2008"]]) == (1.0, 1.0)


def test_drop_task_reports_squad_f1_and_official_f1():
    ex = Example(fields={}, answers=["3 games"], meta={"answer_sets": [["3 games"]]})
    scores = get_task("drop").compute_metrics(["4 games"], [ex])
    assert scores["f1"] == pytest.approx(0.5)  # SQuAD token F1: "games" is shared
    assert scores["drop_f1"] == 0.0 and scores["em"] == 0.0 and scores["drop_em"] == 0.0
    hub_like = Example(fields={}, answers=["Tom Hill", "Ann Lee"])  # no answer_sets: each string alone
    assert get_task("drop").compute_metrics(["Ann Lee"], [hub_like])["drop_f1"] == 1.0


@pytest.mark.parametrize("bad", [-1, 4])
def test_record_entity_index_out_of_range_is_an_error(bad):
    # -1 used to pick the last entity (and score it as right); 4 raised a bare IndexError
    ex = Example(fields={"entities": ["Barcelona", "Lionel Messi", "Messi", "Spain"]}, label=3, answers=["Spain"],
                 id="q7")
    with pytest.raises(ValueError, match=rf"prediction {bad} is not an index into the 4 entities of example 'q7'"):
        get_task("record").compute_metrics([bad], [ex])
