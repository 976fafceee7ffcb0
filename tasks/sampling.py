"""The two sampling protocols of the paper, on already-loaded train / validation examples.

glue (DeBERTa / RoBERTa, Table 1): train = the full train split (or a seeded `num_train` subset);
    test = the official validation split (or a seeded `num_test` subset, else in file order);
    dev = test (the paper reports the best validation score), or its first `num_dev` examples.
mezo (LLaMA-2, Tables 2-3; MeZO's `sample_train_sets` / `sample_subset`): a permutation of the
    train split seeded by `seed` (numpy's legacy RandomState, exactly as MeZO's `temp_seed`) gives
    its first num_train + num_dev examples; dev = the last num_dev of them, train = the rest.
    test = the first num_test of a permutation of the validation split (same seed). Defaults
    1000 / 500 / 1000, with MeZO's dev of 100 for CB and COPA. Small splits shrink as in MeZO:
    with fewer than num_train + num_dev train examples, all are taken, dev keeps num_dev and train
    gets the rest (CB 150/100, COPA 300/100, WSC 54/500); test is the whole validation split when
    it has fewer than num_test (CB 56, COPA 100, WSC 104).

Sizes the caller passes explicitly and the data cannot fill shrink the same way, with a warning (the
defaults shrink silently: that is MeZO's protocol). The seed must be an integer: numpy would take
None as "draw from the OS" and give a different sample on every call.
"""

from __future__ import annotations

import warnings
from typing import Sequence, TypeVar

import numpy as np

T = TypeVar("T")

MEZO_NUM_TRAIN = 1000
MEZO_NUM_TEST = 1000
SPLIT_SEED = 0  # tasks.loading.split_validation: one fixed train/held-out division for every run seed


def permuted(items: Sequence[T], seed: int, num: int | None = None) -> list[T]:
    """The first `num` items of a seeded permutation (MeZO's `sample_subset`)."""
    order = np.random.RandomState(seed).permutation(len(items))
    if num is not None:
        order = order[:num]
    return [items[i] for i in order]


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check(name: str, value: int | None) -> None:
    if value is not None and (not _is_int(value) or value < 0):
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")


def _check_seed(seed) -> None:
    if not _is_int(seed) or not 0 <= seed < 2**32:  # numpy's RandomState range
        raise ValueError(f"seed must be an integer in 0..2**32-1, got {seed!r}")


def _warn_short(name: str, asked: int | None, got: int, where: str) -> None:
    """Say when an explicitly requested size could not be filled (None: the protocol's default)."""
    if asked is not None and got < asked:
        warnings.warn(f"{name}={asked} asked for, but {where}: {name.removeprefix('num_')} gets {got}",
                      stacklevel=3)


def glue_protocol(train: Sequence[T], valid: Sequence[T], seed: int = 0, num_train: int | None = None,
                  num_dev: int | None = None, num_test: int | None = None) -> dict[str, list[T]]:
    _check_seed(seed)
    for name, v in (("num_train", num_train), ("num_dev", num_dev), ("num_test", num_test)):
        _check(name, v)
    train_out = list(train) if num_train is None or num_train >= len(train) else permuted(train, seed, num_train)
    test = list(valid) if num_test is None or num_test >= len(valid) else permuted(valid, seed, num_test)
    dev = test if num_dev is None else test[:num_dev]
    _warn_short("num_train", num_train, len(train_out), f"the train split has only {len(train)} examples")
    _warn_short("num_test", num_test, len(test), f"the validation split has only {len(valid)} examples")
    _warn_short("num_dev", num_dev, len(dev), f"the test set (= validation) has only {len(test)} examples")
    return {"train": train_out, "dev": dev, "test": test}


def mezo_protocol(train: Sequence[T], valid: Sequence[T], seed: int = 0, num_train: int | None = None,
                  num_dev: int | None = None, num_test: int | None = None,
                  default_num_dev: int = 500) -> dict[str, list[T]]:
    _check_seed(seed)
    asked = {"num_train": num_train, "num_test": num_test}  # explicit sizes, for the warnings below
    num_train = MEZO_NUM_TRAIN if num_train is None else num_train
    num_dev = default_num_dev if num_dev is None else num_dev
    num_test = MEZO_NUM_TEST if num_test is None else num_test
    for name, v in (("num_train", num_train), ("num_dev", num_dev), ("num_test", num_test)):
        _check(name, v)
    sampled = permuted(train, seed, num_train + num_dev)
    if num_dev and len(sampled) <= num_dev:
        raise ValueError(f"the train split has {len(train)} examples: no training examples are left "
                         f"after a dev set of {num_dev}; pass a smaller num_dev")
    dev = sampled[len(sampled) - num_dev:] if num_dev else []
    train_out = sampled[:len(sampled) - num_dev]
    test = permuted(valid, seed, num_test)
    _warn_short("num_train", asked["num_train"], len(train_out),
                f"the train split has only {len(train)} examples, {num_dev} of them for dev")
    _warn_short("num_test", asked["num_test"], len(test), f"the validation split has only {len(valid)} examples")
    return {"train": train_out, "dev": dev, "test": test}


PROTOCOLS = {"glue": glue_protocol, "mezo": mezo_protocol}
