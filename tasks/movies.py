"""`movie_snippets`: real Rotten Tomatoes sentences rated by people, an SST-2-like binary task that
works offline once fetched (VADER ground truth, Hutto & Gilbert, ICWSM 2014).

File: `movieReviewSnippets_GroundTruth.txt`, 10,605 lines `id<TAB>score<TAB>text`, where score is the
mean of about 20 human ratings on [-4, 4] (UTF-8 with CRLF line ends; cp1252 is accepted too).
Get it with `tasks.fetch.vader_movie_snippets(dest_dir)` (pip downloads the vaderSentiment 3.3.2
source distribution, which ships it inside `additional_resources/hutto_ICWSM_2014.tar.gz`).

Labels: positive if score > 0. Rows with |score| < `min_abs_score` (default 0.5) are near-neutral
and dropped: 10,072 rows remain (5,076 negative / 4,996 positive). There is no official split, so a
fixed permutation (`split_seed`, default 0, independent of the experiment's seed) puts
`valid_fraction` (default 10%, 1,007 rows: 521 / 486) in "validation" and the rest (9,065) in "train", both
kept in file order. Build a variant with `make_movie_snippets(...)` and `tasks.registry.register`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import metrics, prompts
from .readers import DataFormatError, _lines, read_text
from .spec import DiskFormat, Example, TaskSpec

FILE = "movieReviewSnippets_GroundTruth.txt"
NAMES = ("negative", "positive")


def read_snippets(path: Path) -> list[tuple[int, str, float, str]]:
    """(line, id, score, text) for every line of the ground-truth file."""
    rows = []
    for line, text in _lines(read_text(path, encodings=("utf-8-sig", "cp1252"))):
        parts = text.split("\t")
        if len(parts) != 3:
            raise DataFormatError(path, line, f"{len(parts)} tab-separated fields, expected 3 (id, score, text)")
        try:
            score = float(parts[1])
        except ValueError:
            raise DataFormatError(path, line, f"score {parts[1]!r} is not a number") from None
        if not -4.0 <= score <= 4.0:
            raise DataFormatError(path, line, f"score {score} outside the rating scale [-4, 4]")
        rows.append((line, parts[0], score, parts[2]))
    if not rows:
        raise DataFormatError(path, None, "no rows")
    return rows


def snippet_parser(min_abs_score: float = 0.5, valid_fraction: float = 0.1, split_seed: int = 0):
    def parse(path: Path, split: str) -> list[Example]:
        kept = [r for r in read_snippets(path) if abs(r[2]) >= min_abs_score]
        n_valid = int(round(valid_fraction * len(kept)))
        valid = set(np.random.RandomState(split_seed).permutation(len(kept))[:n_valid].tolist())
        if split not in ("train", "validation"):
            raise KeyError(f"movie_snippets has splits train/validation, not {split!r}")
        chosen = [r for i, r in enumerate(kept) if (i in valid) == (split == "validation")]
        return [Example(fields={"sentence": text}, label=int(score > 0), id=rid, meta={"score": score})
                for _, rid, score, text in chosen]

    return parse


def make_movie_snippets(min_abs_score: float = 0.5, valid_fraction: float = 0.1, split_seed: int = 0,
                        name: str = "movie_snippets", aliases: tuple[str, ...] = ()) -> TaskSpec:
    from .fetch import vader_movie_snippets

    return TaskSpec(
        name=name, kind="classification", labels=NAMES, primary_metric="accuracy",
        text_fields=("sentence",), metrics=metrics.accuracy_set,
        disk=(DiskFormat(files={"train": FILE, "validation": FILE},
                         subdirs=("hutto_ICWSM_2014", "vader", "vader/hutto_ICWSM_2014", "movie_snippets",
                                  "movie_snippets/hutto_ICWSM_2014"),
                         parse=snippet_parser(min_abs_score, valid_fraction, split_seed),
                         describe="VADER movie-review ground truth (id<TAB>score<TAB>text)"),),
        hub=None, fetch=vader_movie_snippets, aliases=aliases,
        encoder_fields=("sentence", None), template=prompts.sst2, long_field="sentence",
        description="Rotten Tomatoes snippets with human sentiment ratings (VADER ground truth), "
                    "binary like SST-2; MeZO's SST-2 prompt.",
    )


MOVIE_SNIPPETS = make_movie_snippets(aliases=("vader_movies", "rt_snippets", "vader_movie_snippets", "movie_reviews"))
