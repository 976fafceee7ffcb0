import subprocess
import sys
from pathlib import Path

import pytest

import tasks
from tasks import Example, Prompted, TaskSpec, get_task, task_names
from tasks.registry import UnknownTaskError, register

REPO = Path(__file__).resolve().parents[2]

EXPECTED = {
    # name: (kind, primary metric, num_labels, encoder, decoder)
    "mnli": ("classification", "accuracy", 3, True, False),
    "mnli_mm": ("classification", "accuracy", 3, True, False),
    "sst2": ("classification", "accuracy", 2, True, True),
    "mrpc": ("classification", "f1", 2, True, False),
    "cola": ("classification", "matthews_correlation", 2, True, False),
    "qnli": ("classification", "accuracy", 2, True, False),
    "qqp": ("classification", "f1", 2, True, False),
    "rte": ("classification", "accuracy", 2, True, True),
    "stsb": ("regression", "spearmanr", 1, True, False),
    "cb": ("classification", "accuracy", 3, True, True),
    "boolq": ("classification", "accuracy", 2, True, True),
    "wsc": ("classification", "accuracy", 2, False, True),
    "wic": ("classification", "accuracy", 2, False, True),
    "multirc": ("classification", "accuracy", 2, False, True),
    "copa": ("multiple_choice", "accuracy", 0, False, True),
    "record": ("multiple_choice", "accuracy", 0, False, True),
    "squad": ("generation", "f1", 0, False, True),
    "drop": ("generation", "f1", 0, False, True),
    "movie_snippets": ("classification", "accuracy", 2, True, True),
}


def test_task_names_are_the_canonical_sorted_names():
    assert task_names() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_task_describes_itself(name):
    spec = get_task(name)
    kind, primary, num_labels, encoder, decoder = EXPECTED[name]
    assert isinstance(spec, TaskSpec) and spec.name == name
    assert (spec.kind, spec.primary_metric, spec.num_labels) == (kind, primary, num_labels)
    assert (spec.supports_encoder, spec.supports_decoder) == (encoder, decoder)
    assert spec.text_fields and all(isinstance(f, str) for f in spec.text_fields)
    assert spec.hub is not None or spec.fetch is not None
    if kind in ("multiple_choice", "generation", "regression"):
        assert spec.label_names == []
    else:
        assert isinstance(spec.label_names, list) and len(spec.label_names) == spec.num_labels


@pytest.mark.parametrize("alias,name", [
    ("SST2", "sst2"), ("SST-2", "sst2"), ("sst_2", "sst2"), ("Copa", "copa"), ("COPA", "copa"),
    ("MultiRC", "multirc"), ("ReCoRD", "record"), ("BoolQ", "boolq"), ("WiC", "wic"), ("WSC", "wsc"),
    ("wsc.fixed", "wsc"), ("CB", "cb"), ("SQuAD", "squad"), ("DROP", "drop"), ("STS-B", "stsb"),
    ("CoLA", "cola"), ("MNLI-m", "mnli"), ("MNLI", "mnli"), ("mnli-mm", "mnli_mm"), ("QQP", "qqp"),
    ("vader_movies", "movie_snippets"), ("rt_snippets", "movie_snippets"), ("Movie_Snippets", "movie_snippets"),
])
def test_lookup_accepts_the_papers_spellings(alias, name):
    assert get_task(alias).name == name


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UnknownTaskError) as info:
        get_task("imdb")
    message = str(info.value)
    assert "imdb" in message and all(n in message for n in task_names())
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_register_refuses_a_taken_name_and_accepts_a_new_task():
    with pytest.raises(ValueError):
        register(get_task("sst2"))
    from dataclasses import replace

    from tasks import registry

    spec = replace(get_task("sst2"), name="sst2_copy", aliases=("my-sst",))
    try:
        register(spec)
        assert get_task("MY_SST") is spec and "sst2_copy" in task_names()
    finally:
        registry._TASKS.pop("sst2_copy")
        for key in ("sst2copy", "mysst"):
            registry._KEYS.pop(key)


def test_encoder_inputs_and_labels():
    ex = Example(fields={"sentence1": "A man.", "sentence2": "A person."}, label=1)
    assert get_task("mrpc").encoder_inputs(ex) == ("A man.", "A person.")
    assert get_task("mrpc").encoder_label(ex) == 1
    assert get_task("sst2").encoder_inputs(Example(fields={"sentence": "ok"}, label=0)) == ("ok", None)
    assert get_task("stsb").encoder_label(Example(fields={}, label=3)) == 3.0
    assert isinstance(get_task("stsb").encoder_label(Example(fields={}, label=3)), float)
    with pytest.raises(ValueError, match="no encoder"):
        get_task("copa").encoder_inputs(Example(fields={}))
    with pytest.raises(ValueError, match="no label"):
        get_task("sst2").encoder_label(Example(fields={"sentence": "x"}))
    with pytest.raises(ValueError, match="no decoder prompt"):
        get_task("mnli").prompt(Example(fields={"premise": "a", "hypothesis": "b"}, label=0))


def test_public_interface():
    for name in ("get_task", "task_names", "TaskSpec", "Example", "Prompted", "load_splits"):
        assert hasattr(tasks, name)
    p = Prompted(context="c", candidates=[" a", " b"], gold=1)
    assert p.answers is None and p.target == " b"
    assert Prompted(context="c", candidates=None, gold=None, answers=["x", "y"]).target == " x\n"


def test_import_needs_neither_datasets_nor_sklearn():
    code = ("import sys, tasks; tasks.get_task('sst2'); "
            "bad = [m for m in ('datasets', 'sklearn', 'scipy', 'torch', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_specs_are_hashable_and_compared_by_identity():
    assert len({get_task("sst2"), get_task("SST-2"), get_task("rte")}) == 2
    assert {get_task("cb"): 1}[get_task("CB")] == 1
