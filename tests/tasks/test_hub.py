"""The Hub path, offline: a stand-in `datasets` module returns rows in the Hub's schemas
(nyu-mll/glue, aps/super_glue, rajpurkar/squad, ucinlp/drop) and we check the conversion."""

import sys
import types

import pytest

from tasks import get_task, load_split, load_splits

ROWS = {
    ("nyu-mll/glue", "sst2", "train"): [{"sentence": "a gripping film ", "label": 1, "idx": 0},
                                        {"sentence": "dull", "label": 0, "idx": 1}],
    ("nyu-mll/glue", "sst2", "validation"): [{"sentence": "fine", "label": 1, "idx": 0}],
    ("nyu-mll/glue", "sst2", "test"): [{"sentence": "?", "label": -1, "idx": 0}],
    ("nyu-mll/glue", "mnli", "validation_mismatched"): [
        {"premise": "P", "hypothesis": "H", "label": 2, "idx": 7}],
    ("nyu-mll/glue", "stsb", "validation"): [{"sentence1": "a", "sentence2": "b", "label": 4.25, "idx": 0}],
    ("nyu-mll/glue", "rte", "validation"): [{"sentence1": "P", "sentence2": "H", "label": 1, "idx": 3}],
    ("aps/super_glue", "multirc", "validation"): [
        {"paragraph": "Para", "question": "Q?", "answer": "A", "idx": {"paragraph": 0, "question": 1, "answer": 2},
         "label": 1}],
    ("aps/super_glue", "record", "validation"): [
        {"passage": "Messi scored.\n@highlight\nWin", "query": "@placeholder scored.",
         "entities": ["Messi", "Barcelona", "Messi"], "entity_spans": {}, "answers": ["Messi"],
         "idx": {"passage": 4, "query": 5}}],
    ("aps/super_glue", "wsc.fixed", "validation"): [
        {"text": "Mark lied. He", "span1_index": 0, "span2_index": 2, "span1_text": "Mark", "span2_text": "He",
         "idx": 0, "label": 0}],
    ("aps/super_glue", "copa", "train"): [
        {"premise": "It rained.", "choice1": "A", "choice2": "B", "question": "effect", "idx": i, "label": i % 2}
        for i in range(10)],
    ("aps/super_glue", "copa", "validation"): [
        {"premise": "It rained.", "choice1": "A", "choice2": "B", "question": "effect", "idx": 0, "label": 1}],
    ("rajpurkar/squad", "plain_text", "validation"): [
        {"id": "56be", "title": "Super_Bowl_50", "context": "The Broncos won.", "question": "Who won?",
         "answers": {"text": ["Broncos", "The Broncos"], "answer_start": [4, 0]}}],
    ("ucinlp/drop", None, "validation"): [
        {"section_id": "nfl_1", "query_id": "q1", "passage": "They won 7 games.", "question": "How many?",
         "answers_spans": {"spans": ["7", "7"], "types": ["number", "number"]}}],
}


@pytest.fixture
def fake_datasets(monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return ROWS[(path, name, split)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_glue_rows(fake_datasets):
    exs = load_split("SST-2", "train")
    assert fake_datasets == [("nyu-mll/glue", "sst2", "train")]
    assert [(e.fields, e.label, e.id) for e in exs] == [({"sentence": "a gripping film "}, 1, "0"),
                                                        ({"sentence": "dull"}, 0, "1")]
    (mm,) = load_split("mnli_mm", "validation")
    assert fake_datasets[-1] == ("nyu-mll/glue", "mnli", "validation_mismatched")
    assert mm.fields == {"premise": "P", "hypothesis": "H"} and mm.label == 2
    (sts,) = load_split("stsb", "validation")
    assert sts.label == 4.25 and get_task("stsb").encoder_inputs(sts) == ("a", "b")
    (rte,) = load_split("rte", "validation")
    assert rte.fields == {"premise": "P", "hypothesis": "H"} and rte.label == 1


def test_unlabelled_rows_are_refused(fake_datasets, monkeypatch):
    spec = get_task("sst2")
    with pytest.raises(ValueError, match=r"nyu-mll/glue/sst2 test row 0: label -1"):
        spec.hub.convert(ROWS[("nyu-mll/glue", "sst2", "test")][0], 0, "test")


def test_superglue_rows(fake_datasets):
    (m,) = load_split("multirc", "validation")
    assert (m.group, m.id, m.label) == ("0-1", "0-1-2", 1)
    assert m.fields == {"paragraph": "Para", "question": "Q?", "answer": "A"}
    (r,) = load_split("record", "validation")
    assert r.fields["entities"] == ["Barcelona", "Messi"] and r.label == 1 and r.answers == ["Messi"]
    assert get_task("record").prompt(r).candidates == [" Barcelona scored.", " Messi scored."]
    (w,) = load_split("wsc", "validation")
    assert w.fields == {"text": "Mark lied. He", "span1_text": "Mark", "span2_text": "He"}
    assert w.meta == {"span1_index": 0, "span2_index": 2}


def test_squad_and_drop_rows(fake_datasets):
    (s,) = load_split("squad", "validation")
    assert s.answers == ["Broncos", "The Broncos"] and s.meta["answer_starts"] == [4, 0] and s.id == "56be"
    assert s.fields == {"title": "Super_Bowl_50", "context": "The Broncos won.", "question": "Who won?"}
    (d,) = load_split("drop", "validation")
    assert d.answers == ["7", "7"] and d.id == "q1" and d.group == "nfl_1"
    assert get_task("drop").compute_metrics(["7"], [d])["drop_f1"] == 1.0


def test_load_splits_from_the_hub(fake_datasets):
    with pytest.warns(UserWarning, match="num_test=5 asked for, but the validation split has only 1"):
        splits = load_splits("copa", protocol="mezo", num_train=4, num_dev=2, num_test=5)
    assert [len(splits[k]) for k in ("train", "dev", "test")] == [4, 2, 1]


HUB = {  # task: (dataset, config, validation split) as published on the Hub
    "mnli": ("nyu-mll/glue", "mnli", "validation_matched"),
    "mnli_mm": ("nyu-mll/glue", "mnli", "validation_mismatched"),
    **{t: ("nyu-mll/glue", t, "validation") for t in ("sst2", "mrpc", "cola", "qnli", "qqp", "rte", "stsb")},
    **{t: ("aps/super_glue", t, "validation") for t in ("boolq", "cb", "copa", "wic", "multirc", "record")},
    "wsc": ("aps/super_glue", "wsc.fixed", "validation"),
    "squad": ("rajpurkar/squad", "plain_text", "validation"),
    "drop": ("ucinlp/drop", None, "validation"),
}


@pytest.mark.parametrize("task", sorted(HUB))
def test_hub_names_and_no_unlabelled_test_split(task):
    src = get_task(task).hub
    assert (src.path, src.config, src.splits) == (HUB[task][0], HUB[task][1],
                                                   {"train": "train", "validation": HUB[task][2]})
    # GLUE / SuperGLUE test splits carry label -1: they must never be an evaluation set, on disk either
    for fmt in get_task(task).disk:
        assert not any("test" in f for f in fmt.files.values()), fmt.files
