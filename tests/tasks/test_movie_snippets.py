"""movie_snippets: the VADER movie-review ground truth, and its fetcher."""

import io
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from tasks import DataFormatError, get_task, load_split, load_splits
from tasks import fetch
from tasks.movies import make_movie_snippets

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SNIPPETS = FIXTURES / "vader" / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"


def test_fixture_split_threshold_and_labels():
    train = load_split("movie_snippets", "train", FIXTURES / "vader")
    valid = load_split("vader_movies", "validation", FIXTURES)
    # 12 rows, two with |score| < 0.5 dropped; 10% of 10 -> 1 validation row
    assert (len(train), len(valid)) == (9, 1)
    everything = train + valid
    assert sorted(int(e.id) for e in everything) == [1, 2, 5, 6, 7, 8, 9, 10, 11, 12]
    assert all(e.label == int(e.meta["score"] > 0) for e in everything)
    assert not any("\r" in e.fields["sentence"] for e in everything)
    assert {e.id: e.fields["sentence"] for e in everything}["11"] == "Bon appétit! A splendid treat."
    assert [e.id for e in train] == sorted((e.id for e in train), key=int)  # file order
    assert load_split("movie_snippets", "validation", FIXTURES)[0].id == valid[0].id  # fixed split


def test_threshold_and_fraction_are_configurable():
    spec = make_movie_snippets(min_abs_score=0.0, valid_fraction=0.25, name="movies_all")
    train, valid = load_split(spec, "train", FIXTURES), load_split(spec, "validation", FIXTURES)
    assert (len(train), len(valid)) == (9, 3)
    strict = make_movie_snippets(min_abs_score=3.0, name="movies_strong")
    assert sorted(e.id for e in load_split(strict, "train", FIXTURES) + load_split(strict, "validation", FIXTURES)) == ["12", "2", "7"]


def test_encoder_and_prompt_like_sst2():
    spec = get_task("movie_snippets")
    ex = load_split(spec, "train", FIXTURES)[0]
    assert spec.label_names == ["negative", "positive"] and spec.encoder_inputs(ex) == (ex.fields["sentence"], None)
    assert spec.prompt(ex).context == ex.fields["sentence"] + " It was"
    splits = load_splits(spec, protocol="mezo", data_dir=FIXTURES, num_train=4, num_dev=2)
    assert [len(splits[k]) for k in ("train", "dev", "test")] == [4, 2, 1]


def test_cp1252_file_and_malformed_rows(tmp_path):
    (tmp_path / "movieReviewSnippets_GroundTruth.txt").write_bytes(
        "1\t2.0\tClich\u00e9d but fun \u2013 really.\r\n2\t-1.0\tBad.\r\n".encode("cp1252"))
    exs = load_split("movie_snippets", "train", tmp_path) + load_split("movie_snippets", "validation", tmp_path)
    assert "Clich\u00e9d but fun \u2013 really." in {e.fields["sentence"] for e in exs}
    (tmp_path / "movieReviewSnippets_GroundTruth.txt").write_text("1\t2.0\tGood.\n2\tbad score\tBad.\n")
    with pytest.raises(DataFormatError, match="line 2: score 'bad score' is not a number"):
        load_split("movie_snippets", "train", tmp_path)
    (tmp_path / "movieReviewSnippets_GroundTruth.txt").write_text("1\t2.0\tGood.\n2\t-9\tBad.\n")
    with pytest.raises(DataFormatError, match=r"line 2: score -9.0 outside"):
        load_split("movie_snippets", "train", tmp_path)
    (tmp_path / "movieReviewSnippets_GroundTruth.txt").write_text("1\t2.0\n")
    with pytest.raises(DataFormatError, match="line 1: 2 tab-separated fields, expected 3"):
        load_split("movie_snippets", "train", tmp_path)


# --- fetch ----------------------------------------------------------------------------------------


def fake_sdist(dest: Path) -> Path:
    """A vaderSentiment-3.3.2.tar.gz with the same layout, holding the fixture file."""
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        data = SNIPPETS.read_bytes()
        info = tarfile.TarInfo(fetch.VADER_FILE_MEMBER)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path = dest / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(path, mode="w:gz") as tar:
        info = tarfile.TarInfo(fetch.VADER_SDIST_MEMBER)
        info.size = len(inner.getvalue())
        tar.addfile(info, io.BytesIO(inner.getvalue()))
    return path


def test_fetch_extracts_once_and_is_idempotent(tmp_path, monkeypatch):
    calls = []

    def fake_pip(requirement, dest):
        calls.append(requirement)
        return fake_sdist(dest)

    monkeypatch.setattr(fetch, "pip_download", fake_pip)
    folder = fetch.vader_movie_snippets(tmp_path / "cache", check_sha256=False)
    assert folder == tmp_path / "cache" / "hutto_ICWSM_2014"
    assert (folder / "movieReviewSnippets_GroundTruth.txt").read_bytes() == SNIPPETS.read_bytes()
    assert fetch.vader_movie_snippets(tmp_path / "cache") == folder  # present: no second download
    assert calls == ["vadersentiment==3.3.2"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["hutto_ICWSM_2014"]  # no leftovers
    assert len(load_split("movie_snippets", "train", folder)) == 9


def test_fetch_checks_the_checksum(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "pip_download", lambda requirement, dest: fake_sdist(dest))
    with pytest.raises(RuntimeError, match="sha256"):
        fetch.vader_movie_snippets(tmp_path)
    assert not (tmp_path / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt").exists()


def test_fetch_reports_an_unreachable_index(tmp_path, monkeypatch):
    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(fetch.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match="(?s)reachable.*No matching distribution"):
        fetch.vader_movie_snippets(tmp_path)


def test_no_data_dir_uses_the_fetch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORETTA_DATA_CACHE", str(tmp_path))
    monkeypatch.setattr(fetch, "pip_download", lambda requirement, dest: fake_sdist(dest))
    spec = get_task("movie_snippets")
    monkeypatch.setattr(fetch, "VADER_FILE_SHA256", __import__("hashlib").sha256(SNIPPETS.read_bytes()).hexdigest())
    assert len(load_split(spec, "train")) == 9


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_real_download(tmp_path):
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable (offline)")
    folder = fetch.vader_movie_snippets(tmp_path)
    spec = get_task("movie_snippets")
    train, valid = load_split(spec, "train", folder), load_split(spec, "validation", folder)
    assert (len(train), len(valid)) == (9_065, 1_007)
    assert sum(e.label for e in train + valid) == 4_996  # positive; 5,076 negative
    from tasks.movies import read_snippets

    assert len(read_snippets(folder / "movieReviewSnippets_GroundTruth.txt")) == 10_605
