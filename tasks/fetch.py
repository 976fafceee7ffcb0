"""Fetching data that no Hub dataset provides.

`vader_movie_snippets(dest_dir)`: `pip download --no-deps --no-binary :all: vadersentiment==3.3.2`
(PyPI, reachable where pip is), then take `movieReviewSnippets_GroundTruth.txt` out of
`additional_resources/hutto_ICWSM_2014.tar.gz` inside it. Idempotent: a present file is reused.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VADER_REQUIREMENT = "vadersentiment==3.3.2"
VADER_SDIST_MEMBER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_FILE_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
VADER_FILE_SHA256 = "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"
VADER_SUBDIR = "hutto_ICWSM_2014"


def default_cache_dir() -> Path:
    """$LORETTA_DATA_CACHE, else ~/.cache/loretta/data."""
    return Path(os.environ.get("LORETTA_DATA_CACHE") or Path.home() / ".cache" / "loretta" / "data")


def pip_download(requirement: str, dest: Path, timeout: float = 300) -> Path:
    """Download one source distribution with pip; returns its path. RuntimeError if pip fails."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "--disable-pip-version-check", "--quiet", requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"could not run pip to download {requirement}: {e}") from None
    sdists = sorted(dest.glob("*.tar.gz"))
    if proc.returncode != 0 or not sdists:
        tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}); is the package index "
                           f"(PyPI or PIP_INDEX_URL) reachable? pip said:\n{tail}")
    return sdists[0]


def _extract_snippets(sdist: Path) -> bytes:
    """The ground-truth file's bytes, read from the tarball inside the sdist (nothing is extracted
    to disk, so member paths cannot escape)."""
    with tarfile.open(sdist, "r:gz") as outer:
        try:
            inner_bytes = outer.extractfile(VADER_SDIST_MEMBER).read()
        except (KeyError, AttributeError):
            raise RuntimeError(f"{sdist}: no {VADER_SDIST_MEMBER}") from None
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        try:
            return inner.extractfile(VADER_FILE_MEMBER).read()
        except (KeyError, AttributeError):
            raise RuntimeError(f"{sdist}: {VADER_SDIST_MEMBER} has no {VADER_FILE_MEMBER}") from None


def vader_movie_snippets(dest_dir: str | Path | None = None, check_sha256: bool = True) -> Path:
    """Make sure `dest_dir/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt` exists and return
    that folder (a `data_dir` for the `movie_snippets` task). Downloads only when it is missing."""
    dest_dir = Path(dest_dir) if dest_dir is not None else default_cache_dir()
    folder = dest_dir / VADER_SUBDIR
    target = folder / Path(VADER_FILE_MEMBER).name
    if target.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir) as tmp:
        data = _extract_snippets(pip_download(VADER_REQUIREMENT, Path(tmp)))
        digest = hashlib.sha256(data).hexdigest()
        if check_sha256 and digest != VADER_FILE_SHA256:
            raise RuntimeError(f"{VADER_FILE_MEMBER} from {VADER_REQUIREMENT} has sha256 {digest}, "
                               f"expected {VADER_FILE_SHA256}")
        part = Path(tmp) / target.name
        part.write_bytes(data)
        os.replace(part, target)  # atomic: a concurrent caller sees the whole file or none
    return folder
