import re
import warnings

import numpy as np
import pytest

from tasks.sampling import glue_protocol, mezo_protocol, permuted

TRAIN = list(range(3000))
VALID = [f"v{i}" for i in range(1200)]


def test_mezo_defaults_and_exact_meZO_indices():
    s = mezo_protocol(TRAIN, VALID, seed=5)
    assert [len(s[k]) for k in ("train", "dev", "test")] == [1000, 500, 1000]
    np.random.seed(5)  # MeZO's temp_seed(seed) + np.random.permutation
    order = np.random.permutation(len(TRAIN)).tolist()[:1500]
    assert s["train"] == order[:1000] and s["dev"] == order[1000:]
    np.random.seed(5)
    assert s["test"] == [VALID[i] for i in np.random.permutation(len(VALID))[:1000]]


def test_mezo_is_deterministic_and_seed_dependent():
    assert mezo_protocol(TRAIN, VALID, seed=0) == mezo_protocol(TRAIN, VALID, seed=0)
    assert mezo_protocol(TRAIN, VALID, seed=0)["train"] != mezo_protocol(TRAIN, VALID, seed=1)["train"]


def test_mezo_small_splits_shrink():
    s = mezo_protocol(list(range(554)), VALID[:104], seed=0)  # WSC's sizes
    assert [len(s[k]) for k in ("train", "dev", "test")] == [54, 500, 104]
    s = mezo_protocol(list(range(250)), VALID[:56], seed=0, default_num_dev=100)  # CB
    assert [len(s[k]) for k in ("train", "dev", "test")] == [150, 100, 56]
    assert not set(s["train"]) & set(s["dev"])
    with pytest.raises(ValueError, match="smaller num_dev"):
        mezo_protocol(list(range(400)), VALID, seed=0)  # 400 train, dev 500: nothing left to train on


def test_mezo_configurable_sizes():
    s = mezo_protocol(TRAIN, VALID, seed=0, num_train=16, num_dev=0, num_test=8)
    assert [len(s[k]) for k in ("train", "dev", "test")] == [16, 0, 8]


def test_glue_protocol():
    s = glue_protocol(TRAIN, VALID)
    assert s["train"] == TRAIN and s["test"] == VALID and s["dev"] is s["test"]
    s = glue_protocol(TRAIN, VALID, seed=2, num_train=100, num_dev=10, num_test=50)
    assert s["train"] == permuted(TRAIN, 2, 100) and s["test"] == permuted(VALID, 2, 50)
    assert s["dev"] == s["test"][:10]
    with pytest.warns(UserWarning, match=r"num_train=1000000 asked for, but the train split has only 3000"):
        assert glue_protocol(TRAIN, VALID, num_train=10**6)["train"] == TRAIN


@pytest.mark.parametrize("protocol", [glue_protocol, mezo_protocol])
@pytest.mark.parametrize("seed", [None, True, 1.5, "0", -1, 2**32])
def test_seed_must_be_an_integer(protocol, seed):
    # seed=None used to draw a fresh OS-entropy permutation: a different sample on every call
    with pytest.raises(ValueError, match=rf"seed must be an integer in 0\.\.2\*\*32-1, got {re.escape(repr(seed))}"):
        protocol(TRAIN, VALID, seed=seed, num_train=10)


def test_sizes_reject_bools():
    with pytest.raises(ValueError, match="num_train must be a non-negative integer or None, got True"):
        mezo_protocol(TRAIN, VALID, num_train=True)


def test_explicit_sizes_larger_than_the_split_warn():
    # MeZO's shrinking stays (CB 150/100/56), but a size the caller asked for and did not get is said
    with pytest.warns(UserWarning) as caught:
        s = mezo_protocol(list(range(250)), VALID[:56], seed=0, num_train=1000, num_dev=100, num_test=1000)
    assert [len(s[k]) for k in ("train", "dev", "test")] == [150, 100, 56]
    messages = " | ".join(str(w.message) for w in caught)
    assert "num_train=1000 asked for, but the train split has only 250 examples, 100 of them for dev: " \
           "train gets 150" in messages
    assert "num_test=1000 asked for, but the validation split has only 56 examples: test gets 56" in messages
    with pytest.warns(UserWarning, match=r"num_dev=50.*only 20"):
        glue_protocol(TRAIN, VALID[:20], num_dev=50)
    with pytest.warns(UserWarning, match=r"num_train=5000.*only 3000"):
        glue_protocol(TRAIN, VALID, num_train=5000)


def test_default_sizes_shrink_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mezo_protocol(list(range(250)), VALID[:56], seed=0, default_num_dev=100)  # MeZO's CB: 150/100/56
        glue_protocol(TRAIN, VALID, num_train=3000, num_test=1200)  # exactly the split sizes
