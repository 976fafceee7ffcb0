"""Loaders of the benchmarks not in ../shared/data, on small fixture files in the official formats."""

import json
import warnings
from pathlib import Path

import pytest

from tasks import get_task, load_split, load_splits

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load(task, split):
    return load_split(task, split, FIXTURES)


def test_cola_without_header():
    train = load("cola", "train")
    assert len(train) == 6 and [e.label for e in train] == [1, 0, 1, 0, 1, 0]
    assert train[4].fields == {"sentence": "Naïve readers enjoy the café scene."}
    assert get_task("cola").encoder_inputs(train[0]) == ("The cat sat on the mat.", None)


def test_mnli_matched_and_mismatched():
    train = load("mnli", "train")
    assert [e.label for e in train] == [0, 2, 1, 0, 2]  # entailment, contradiction, neutral ...
    assert train[0].fields == {"premise": "A man is playing a guitar on stage.", "hypothesis": "A man is performing music."}
    assert train[0].id == "1000e"
    matched, mismatched = load("mnli", "validation"), load("mnli_mm", "validation")
    assert [e.label for e in matched] == [0, 2, 1] and [e.label for e in mismatched] == [0, 2]
    assert get_task("mnli").encoder_inputs(matched[0]) == ("Two dogs run in a field.", "Animals are outside.")
    assert load("mnli_mm", "train")[0].fields == train[0].fields


def test_qnli_qqp_stsb():
    qnli = load("qnli", "train")
    assert [e.label for e in qnli] == [0, 1, 0, 1] and set(qnli[0].fields) == {"question", "sentence"}
    qqp = load("qqp", "validation")
    assert [e.label for e in qqp] == [1, 0, 1] and qqp[2].fields["question1"] == 'What is "machine learning"?'
    stsb = load("stsb", "train")
    assert [e.label for e in stsb] == [5.0, 3.8, 0.0, 4.4] and stsb[0].fields["sentence2"] == "An air plane is taking off."
    splits = load_splits("STS-B", protocol="glue", data_dir=FIXTURES)
    assert [len(splits[k]) for k in ("train", "dev", "test")] == [4, 3, 3]


def test_boolq_rte_wic_wsc_jsonl():
    boolq = load("boolq", "train")
    assert [e.label for e in boolq] == [1, 0, 0, 1] and boolq[0].fields["question"] == "is the sun a star"
    rte = load("rte", "train")  # the SuperGLUE files (no GLUE RTE fixture here)
    assert [e.label for e in rte] == [0, 1, 0] and set(rte[0].fields) == {"premise", "hypothesis"}
    wic = load("wic", "validation")
    assert [e.label for e in wic] == [1, 0] and wic[0].fields == {
        "word": "play", "sentence1": "The children play outside.", "sentence2": "We play chess on Sundays."}
    wsc = load("wsc", "train")
    assert [e.label for e in wsc] == [0, 1, 1]
    assert wsc[1].fields["span1_text"] == "trophy" and wsc[1].meta == {"span1_index": 1, "span2_index": 9}


def test_multirc_one_example_per_answer_option():
    train = load("multirc", "train")
    assert len(train) == 5 and [e.label for e in train] == [1, 0, 1, 1, 0]
    assert [e.group for e in train] == ["0-0", "0-0", "0-0", "0-1", "0-1"] and train[2].id == "0-0-2"
    assert train[0].fields["question"] == "How many apples did Ana have at home?" and train[0].fields["answer"] == "Two"
    val = load("multirc", "validation")
    scores = get_task("multirc").compute_metrics([1, 0, 1, 1], val)
    assert scores["em"] == 0.5 and scores["accuracy"] == 0.75


def test_record_entities_and_gold():
    train = load("record", "train")
    assert len(train) == 2
    first = train[0]
    assert first.fields["entities"] == ["Barcelona", "Lionel Messi", "Messi", "Real Madrid", "Spain"]
    assert first.answers == ["Barcelona"] and first.label == 0 and first.id == "0-0"
    second = train[1]
    assert second.answers == ["Lionel Messi", "Messi"] and second.label == 1  # index of answers[0]
    p = get_task("record").prompt(second)
    assert p.context.endswith("\n- Messi scored two goals\n- Barcelona won the match\n-")
    assert p.target == " The two goals were scored by Lionel Messi."
    (val,) = load("record", "validation")
    assert val.fields["entities"] == ["Eiffel Tower", "France", "Paris"] and val.label == 0


def test_squad_train_and_dev_fixture():
    train = load("squad", "train")
    assert [e.answers for e in train] == [["South America"], ["Brazil, Peru and Colombia"], ["crêpes"]]
    assert train[2].fields["title"] == "Café" and train[2].meta["answer_starts"] == [25]
    splits = load_splits("squad", protocol="mezo", data_dir=FIXTURES, num_train=2, num_dev=1)
    assert [len(splits[k]) for k in ("train", "dev", "test")] == [2, 1, 2]
    dev = load("squad", "validation")
    assert dev[0].answers == ["Denver Broncos", "Denver Broncos", "The Denver Broncos"]
    assert get_task("squad").prompt(dev[1]).context.endswith("\nQuestion: Where was the game played?\nAnswer:")


def test_drop_like_the_hub_plus_official_answer_sets():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = load("drop", "train")
    assert [e.id for e in train] == ["t1", "t2", "t3"]  # t4 mixes a number and a span: dropped ...
    assert any("t4" in str(w.message) for w in caught)  # ... with a warning naming it
    assert [e.answers for e in train] == [["2"], ["Tom Hill", "Ann Lee"], ["1990"]]
    assert train[1].meta["answer_sets"] == [["Tom Hill", "Ann Lee"]]
    dev = load("drop", "validation")
    assert [e.answers for e in dev] == [["3500", "3,500"], ["4 May 2008"], ["Jo Park", "Jo Park"]]
    assert dev[0].meta["answer_sets"] == [["3500"], ["3,500"]]
    assert dev[2].meta["answer_sets"] == [["Jo Park"]]
    scores = get_task("drop").compute_metrics(["3500", "May 4, 2008", "Park"], dev)
    assert scores["em"] == pytest.approx(1 / 3)
    assert get_task("drop").prompt(dev[0]).context.startswith("Passage: The city had 12,000 residents")


def test_every_fixture_task_renders_a_prompt():
    for task in ("boolq", "rte", "wic", "wsc", "multirc", "record", "squad", "drop"):
        spec = get_task(task)
        for ex in load(task, "validation"):
            p = spec.prompt(ex)
            assert p.context
            if spec.kind in ("classification", "multiple_choice"):
                assert 0 <= p.gold < len(p.candidates)
            else:
                assert p.candidates is None and p.target.endswith("\n")


def test_wsc_files_get_the_span_fixes_of_the_hubs_wsc_fixed(tmp_path):
    """aps/super_glue `wsc.fixed` (what MeZO and our Hub path use) repairs span texts that are not
    substrings of the text: the first letter's case follows the word at the span index, a final "."
    and newlines go. The original files must read the same."""
    rows = [
        ("The man couldn't lift his son because he was so weak.", 0, "the man", 7, "he"),  # case
        ("I poured water from the bottle into the cup until it was full.", 4, "the bottle.", 10, "it"),  # "."
        ("Sam took French classes from Adam, because he was eager to speak it fluently.", 5, "Adam", 7, "He"),
        ("Mary and Anne met the mayor; she smiled.", 4, "the\nmayor", 6, "she"),  # newline in the span
        ("Kamenev and later Zinoviev lost to Stalin.", 0, "Kamenev and Zinoviev", 5, "Stalin"),  # unfixable
    ]
    with open(tmp_path / "val.jsonl", "w") as f:
        for i, (text, i1, s1, i2, s2) in enumerate(rows):
            f.write(json.dumps({"text": text, "target": {"span1_index": i1, "span1_text": s1, "span2_index": i2,
                                                         "span2_text": s2}, "idx": i, "label": True}) + "\n")
    spans = [(e.fields["span1_text"], e.fields["span2_text"]) for e in load_split("wsc", "validation", tmp_path)]
    assert spans == [("The man", "he"), ("the bottle", "it"), ("Adam", "he"), ("the mayor", "she"),
                     ("Kamenev and Zinoviev", "Stalin")]
