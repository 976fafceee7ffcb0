"""Loaders on the real benchmark files in ../shared/data: sizes and label balance as published."""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tasks import get_task, load_split, load_splits

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")


def balance(examples):
    return dict(Counter(e.label for e in examples))


@pytest.mark.parametrize("task,split,size,labels", [
    ("sst2", "train", 67_349, {1: 37_569, 0: 29_780}),
    ("sst2", "validation", 872, {1: 444, 0: 428}),
    ("rte", "train", 2_490, {0: 1_249, 1: 1_241}),
    ("rte", "validation", 277, {0: 146, 1: 131}),
    ("mrpc", "train", 3_668, {1: 2_474, 0: 1_194}),
    ("mrpc", "validation", 408, {1: 279, 0: 129}),
    ("cb", "train", 250, {0: 115, 1: 119, 2: 16}),  # entailment, contradiction, neutral
    ("cb", "validation", 56, {0: 23, 1: 28, 2: 5}),
    ("copa", "train", 400, {0: 195, 1: 205}),
    ("copa", "validation", 100, {0: 55, 1: 45}),
    ("boolq", "validation", 3_270, {1: 2_033, 0: 1_237}),
])
def test_sizes_and_label_balance(task, split, size, labels):
    examples = load_split(task, split, DATA)
    assert len(examples) == size
    assert balance(examples) == labels
    spec = get_task(task)
    for ex in examples[:50]:
        assert all(isinstance(ex.fields[f], str) and ex.fields[f] for f in spec.text_fields)


def read_raw(path: Path) -> list[dict]:
    """The file read independently of tasks.readers: csv without quoting (GLUE) or json per line."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        if path.suffix == ".tsv":
            return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("task,split,file,columns,label", [
    ("sst2", "train", "glue/SST-2/train.tsv", ("sentence",), "label"),
    ("sst2", "validation", "glue/SST-2/dev.tsv", ("sentence",), "label"),
    ("rte", "train", "glue/RTE/train.tsv", ("sentence1", "sentence2"), "label"),
    ("rte", "validation", "glue/RTE/dev.tsv", ("sentence1", "sentence2"), "label"),
    ("mrpc", "train", "glue/MRPC/train.tsv", ("#1 String", "#2 String"), "Quality"),
    ("mrpc", "validation", "glue/MRPC/dev.tsv", ("#1 String", "#2 String"), "Quality"),
    ("cb", "train", "superglue/CB/train.jsonl", ("premise", "hypothesis"), "label"),
    ("cb", "validation", "superglue/CB/val.jsonl", ("premise", "hypothesis"), "label"),
    ("copa", "validation", "superglue/COPA/val.jsonl", ("premise", "choice1", "choice2", "question"), "label"),
    ("boolq", "validation", "superglue/BoolQ/val.jsonl", ("question", "passage"), "label"),
])
def test_every_row_is_read_verbatim(task, split, file, columns, label):
    """Row for row against an independent reader: nothing dropped, duplicated, re-quoted or re-encoded
    (MRPC's sentences hold quote characters; its file starts with a byte-order mark)."""
    raw = read_raw(DATA / file)
    examples = load_split(task, split, DATA)
    spec = get_task(task)
    assert len(examples) == len(raw)
    assert [[ex.fields[f] for f in spec.text_fields] for ex in examples] == [[r[c] for c in columns] for r in raw]
    names = spec.label_names  # label values map to the Hub's (GLUE / SuperGLUE) class order
    expected = [names.index(r[label]) if r[label] in names else int(r[label]) for r in raw]
    assert [ex.label for ex in examples] == expected
    assert len({ex.id for ex in examples}) == len(examples)
    if task == "mrpc":
        assert sum('"' in ex.fields["sentence1"] for ex in examples) > 50  # quotes kept, not parsed


def test_mrpc_bom_and_columns():
    first = load_split("mrpc", "train", DATA / "glue" / "MRPC")[0]  # the task folder works as data_dir too
    assert first.label == 1 and first.fields["sentence1"].startswith("Amrozi accused his brother")
    assert set(first.fields) == {"sentence1", "sentence2"}


def test_squad_dev():
    examples = load_split("squad", "validation", DATA)
    assert len(examples) == 10_570
    assert len({e.fields["context"] for e in examples}) == 2_067
    assert len({e.fields["title"] for e in examples}) == 48
    assert sum(len(e.answers) for e in examples) == 34_726
    for e in examples:
        assert e.answers and all(e.fields["context"][s:s + len(a)] == a
                                 for a, s in zip(e.answers, e.meta["answer_starts"]))
    assert examples[0].answers == ["Denver Broncos"] * 3


def test_glue_protocol_on_real_files():
    splits = load_splits("rte", protocol="glue", data_dir=DATA)
    assert [len(splits[k]) for k in ("train", "dev", "test")] == [2_490, 277, 277]
    assert splits["dev"] is splits["test"]
    sub = load_splits("sst2", protocol="glue", data_dir=DATA, seed=3, num_train=2_000, num_test=100)
    assert [len(sub[k]) for k in ("train", "dev", "test")] == [2_000, 100, 100]


def test_mezo_protocol_reproduces_meZO_sampling():
    train = load_split("sst2", "train", DATA)
    valid = load_split("sst2", "validation", DATA)
    splits = load_splits("SST2", protocol="mezo", data_dir=DATA, seed=0)
    assert [len(splits[k]) for k in ("train", "dev", "test")] == [1_000, 500, 872]
    # MeZO: np.random.seed(seed); np.random.permutation(len(train))[:1500]; dev = the last 500
    np.random.seed(0)
    order = np.random.permutation(len(train)).tolist()[:1_500]
    assert [e.id for e in splits["train"]] == [train[i].id for i in order[:1_000]]
    assert [e.id for e in splits["dev"]] == [train[i].id for i in order[1_000:]]
    np.random.seed(0)
    assert [e.id for e in splits["test"]] == [valid[i].id for i in np.random.permutation(len(valid))[:1_000]]
    other = load_splits("sst2", protocol="mezo", data_dir=DATA, seed=1)
    assert [e.id for e in other["train"]] != [e.id for e in splits["train"]]


@pytest.mark.parametrize("task,sizes", [("cb", [150, 100, 56]), ("copa", [300, 100, 100]), ("rte", [1_000, 500, 277])])
def test_small_splits_shrink_as_in_mezo(task, sizes):
    splits = load_splits(task, protocol="mezo", data_dir=DATA, seed=0)
    assert [len(splits[k]) for k in ("train", "dev", "test")] == sizes
    assert not {e.id for e in splits["train"]} & {e.id for e in splits["dev"]}


def test_real_prompts_render():
    ex = load_split("copa", "validation", DATA)[0]
    p = get_task("copa").prompt(ex)
    assert p.context == "The man turned on the faucet so"
    assert p.candidates == [" the toilet filled with water.", " water flowed from the spout."] and p.gold == 1
    boolq = load_split("boolq", "validation", DATA)[0]
    p = get_task("boolq").prompt(boolq)
    assert p.context.endswith(" Does ethanol take more energy make that produces?\n") and p.gold == 0


def test_boolq_without_a_train_split_says_how_to_carve_one():
    with pytest.raises(FileNotFoundError, match="split_validation=N"):
        load_splits("boolq", protocol="mezo", data_dir=DATA)


@pytest.mark.parametrize("task,held_out,size", [("boolq", 1_000, 3_270), ("squad", 1_000, 10_570)])
def test_split_validation_trains_on_the_rest_of_the_validation_split(task, held_out, size):
    runs = [load_splits(task, protocol="mezo", data_dir=DATA, seed=s, num_train=200, num_dev=50, num_test=300,
                        split_validation=held_out) for s in (0, 1)]
    everything = load_splits(task, protocol="mezo", data_dir=DATA, num_train=size - held_out - 1, num_dev=1,
                             num_test=held_out, split_validation=held_out)
    for splits in runs:
        assert [len(splits[k]) for k in ("train", "dev", "test")] == [200, 50, 300]
        train_ids = {e.id for e in splits["train"]} | {e.id for e in splits["dev"]}
        assert not train_ids & {e.id for e in splits["test"]}
    # the held-out pool is the same for every run seed: no seed trains on another seed's test examples
    held = {e.id for e in everything["test"]}
    assert len(held) == held_out
    for splits in runs:
        assert {e.id for e in splits["test"]} <= held
        assert not ({e.id for e in splits["train"]} | {e.id for e in splits["dev"]}) & held
    assert [e.id for e in runs[0]["train"]] != [e.id for e in runs[1]["train"]]


@pytest.mark.parametrize("bad", [0, 3_270, -5, 2.5, True])
def test_split_validation_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match=r"split_validation must be an integer in 1\.\.3269.*got"):
        load_splits("boolq", protocol="mezo", data_dir=DATA, split_validation=bad)
