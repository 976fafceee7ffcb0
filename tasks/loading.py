"""Loading a task's splits: from original-format files (`data_dir`) or from the Hugging Face Hub.

`data_dir` may be the task's own folder (holding e.g. train.tsv / dev.tsv) or any folder above it
laid out like `../shared/data` (`glue/SST-2`, `superglue/CB`, `squad`, ...); the folders each
format searches are listed in its `DiskFormat.subdirs`. `datasets` is imported only for the Hub.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .registry import get_task
from .sampling import SPLIT_SEED, glue_protocol, mezo_protocol, permuted
from .spec import Example, TaskSpec

SPLITS = ("train", "validation")


def _spec(task: TaskSpec | str) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else get_task(task)


def find_file(spec: TaskSpec, split: str, data_dir: str | Path):
    """(DiskFormat, path) of the first format whose file for `split` exists under `data_dir`."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"task {spec.name!r}: data_dir {data_dir} is not a directory")
    tried, expected = [], []
    for fmt in spec.disk:
        if split not in fmt.files:
            continue
        expected.append(f"{fmt.files[split]} ({fmt.describe})")
        for folder in (data_dir, *(data_dir / s for s in fmt.subdirs)):
            path = folder / fmt.files[split]
            if path.is_file():
                return fmt, path
            tried.append(str(path))
    if not expected:
        raise KeyError(f"task {spec.name!r} has no split {split!r} on disk; it has "
                       f"{sorted({s for f in spec.disk for s in f.files})}")
    raise FileNotFoundError(f"task {spec.name!r}, split {split!r}: expected {' or '.join(expected)}; "
                            f"looked for {', '.join(tried)}")


def load_disk(spec: TaskSpec, split: str, data_dir: str | Path) -> list[Example]:
    fmt, path = find_file(spec, split, data_dir)
    return fmt.parse(path, split)


def load_hub(spec: TaskSpec, split: str) -> list[Example]:
    """`datasets.load_dataset(...)` of the task's Hub source, converted row by row."""
    src = spec.hub
    if src is None:
        raise ValueError(f"task {spec.name!r} has no Hub dataset; pass data_dir")
    if split not in src.splits:
        raise KeyError(f"task {spec.name!r}: no split {split!r} on the Hub (has {sorted(src.splits)})")
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"loading {spec.name!r} from the Hub needs the `datasets` package "
                          f"(pip install datasets), or pass data_dir= to read the original files") from e
    rows = datasets.load_dataset(src.path, src.config, split=src.splits[split])
    out, dropped = [], 0
    for i, row in enumerate(rows):
        ex = src.convert(row, i, split)
        if ex is None:
            dropped += 1
        else:
            out.append(ex)
    if dropped:
        warnings.warn(f"{src.path}/{src.config} {split}: dropped {dropped} row(s)", stacklevel=2)
    return out


def load_split(task: TaskSpec | str, split: str, data_dir: str | Path | None = None) -> list[Example]:
    """One split ("train" or "validation") of a task, from `data_dir` or, when None, from the Hub
    (or, for a task without a Hub dataset, from its fetcher's cache)."""
    spec = _spec(task)
    if data_dir is None:
        if spec.hub is not None:
            return load_hub(spec, split)
        if spec.fetch is None:
            raise ValueError(f"task {spec.name!r} has no Hub dataset and no fetcher; pass data_dir")
        data_dir = spec.fetch(None)
    return load_disk(spec, split, data_dir)


def carve_train_split(valid: list[Example], held_out: int, task: str = "task") -> dict[str, list[Example]]:
    """Carve a train split out of the validation split, for data that ships only the latter
    (BoolQ and SQuAD in ../shared/data): a permutation with the fixed seed SPLIT_SEED (the same for
    every run seed, so that no seed trains on another seed's test examples) keeps its first
    `held_out` examples as the validation split and gives the rest to train."""
    if not isinstance(held_out, int) or isinstance(held_out, bool) or not 0 < held_out < len(valid):
        raise ValueError(f"{task}: split_validation must be an integer in 1..{len(valid) - 1} (the number of "
                         f"validation examples held out for evaluation; the split has {len(valid)}), got {held_out!r}")
    order = permuted(valid, SPLIT_SEED)
    return {"train": order[held_out:], "validation": order[:held_out]}


def load_splits(task: TaskSpec | str, protocol: str = "glue", data_dir: str | Path | None = None, seed: int = 0,
                num_train: int | None = None, num_dev: int | None = None,
                num_test: int | None = None, split_validation: int | None = None) -> dict[str, list[Example]]:
    """{"train", "dev", "test"} lists of examples under a protocol (see `tasks.sampling`).

    `split_validation=N`: the task's train split is not read; the validation split is divided by
    `split_validation` (N held-out examples, the rest for training) before the protocol samples."""
    spec = _spec(task)
    if protocol not in ("glue", "mezo"):
        raise ValueError(f"protocol must be 'glue' or 'mezo', got {protocol!r}")
    valid = load_split(spec, "validation", data_dir)
    if split_validation is not None:
        pools = carve_train_split(valid, split_validation, spec.name)
        train, valid = pools["train"], pools["validation"]
    else:
        try:
            train = load_split(spec, "train", data_dir)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err}. To train on part of the validation split instead, pass "
                                    f"split_validation=N (N examples held out for evaluation)") from err
    if protocol == "glue":
        return glue_protocol(train, valid, seed, num_train, num_dev, num_test)
    return mezo_protocol(train, valid, seed, num_train, num_dev, num_test, default_num_dev=spec.mezo_num_dev)
