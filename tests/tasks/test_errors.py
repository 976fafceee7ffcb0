"""Errors name the file, the line and what was expected; nothing is skipped silently."""

import json
from pathlib import Path

import pytest

from tasks import DataFormatError, load_split, load_splits
from tasks.readers import read_tsv

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def write(path: Path, text: str, encoding="utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def test_missing_directory_file_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_split("sst2", "train", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as info:
        load_split("sst2", "train", tmp_path)
    message = str(info.value)
    assert "train.tsv" in message and str(tmp_path / "glue" / "SST-2" / "train.tsv") in message
    assert "SST-2 TSV" in message
    with pytest.raises(KeyError, match="no split 'test'"):
        load_split("sst2", "test", tmp_path)


def test_wrong_field_count_names_file_and_line(tmp_path):
    path = write(tmp_path / "train.tsv", "sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n")
    with pytest.raises(DataFormatError) as info:
        load_split("sst2", "train", tmp_path)
    assert f"{path}, line 3" in str(info.value) and "3 tab-separated fields, expected 2" in str(info.value)
    assert info.value.line == 3


def test_bad_label_names_file_and_line(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\ngood film\t1\nodd film\t2\n")
    with pytest.raises(DataFormatError, match=r"train.tsv, line 3: label '2' is not one of \['0', '1'\]"):
        load_split("sst2", "train", tmp_path)
    write(tmp_path / "val.jsonl", '{"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 0}\n')
    with pytest.raises(DataFormatError, match=r"val.jsonl, line 1: label 'maybe' is not one of"):
        load_split("cb", "validation", tmp_path)
    write(tmp_path / "train.jsonl", '{"question": "q", "passage": "p", "label": 1, "idx": 0}\n')
    with pytest.raises(DataFormatError, match="label 1 is not one of"):  # BoolQ wants true/false
        load_split("boolq", "train", tmp_path)


def test_missing_header_column(tmp_path):
    write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(DataFormatError, match=r"line 1: header .* lacks column\(s\) \['sentence2'\]"):
        load_split("rte", "train", tmp_path)


def test_empty_line_and_empty_file(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\ngood\t1\n\nbad\t0\n")
    with pytest.raises(DataFormatError, match="line 3: empty line"):
        load_split("sst2", "train", tmp_path)
    write(tmp_path / "dev.tsv", "")
    with pytest.raises(DataFormatError, match="line 1: empty file"):
        load_split("sst2", "validation", tmp_path)


def test_cola_without_header_checks_columns(tmp_path):
    write(tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tGood sentence.\ngj04\t0\tBad sentence.\n")
    with pytest.raises(DataFormatError, match=r"CoLA.train.tsv, line 2: 3 tab-separated fields, expected 4"):
        load_split("cola", "train", tmp_path)


def test_invalid_json_lines(tmp_path):
    write(tmp_path / "train.jsonl", '{"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", '
                                    '"label": 0, "idx": 0}\n{"premise": oops}\n')
    with pytest.raises(DataFormatError, match=r"train.jsonl, line 2: invalid JSON"):
        load_split("copa", "train", tmp_path)
    write(tmp_path / "val.jsonl", '{"premise": "p", "choice1": "a", "question": "cause", "label": 0}\n')
    with pytest.raises(DataFormatError, match=r"line 1: row lacks key\(s\) \['choice2'\]"):
        load_split("copa", "validation", tmp_path)


def test_bad_regression_score(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write(tmp_path / "train.tsv", header + "0\tg\tf\ty\t1\tn\tn\tA.\tB.\tfive\n")
    with pytest.raises(DataFormatError, match="line 2: score 'five' is not a number"):
        load_split("stsb", "train", tmp_path)
    for bad in ("nan", "inf", "-Infinity"):  # float() takes them; a NaN label made every correlation NaN
        write(tmp_path / "dev.tsv", header + "0\tg\tf\ty\t1\tn\tn\tA.\tB.\t3.0\n"
                                   f"1\tg\tf\ty\t1\tn\tn\tC.\tD.\t{bad}\n")
        with pytest.raises(DataFormatError, match=f"line 3: score '{bad}' is not a finite number"):
            load_split("stsb", "validation", tmp_path)


def test_squad_without_answers_is_an_error(tmp_path):
    doc = {"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": "x1", "question": "q", "answers": []}]}]}]}
    write(tmp_path / "dev-v1.1.json", json.dumps(doc))
    with pytest.raises(DataFormatError, match=r"data\[0\].paragraphs\[0\].qas\[0\] \(id x1\): no answers"):
        load_split("squad", "validation", tmp_path)
    write(tmp_path / "train-v1.1.json", "{not json")
    with pytest.raises(DataFormatError, match="train-v1.1.json, line 1: invalid JSON"):
        load_split("squad", "train", tmp_path)


def test_record_gold_must_be_an_entity(tmp_path):
    text = "Alice met Bob."
    row = {"idx": 0, "passage": {"text": text, "entities": [{"start": 0, "end": 4}]},
           "qas": [{"query": "@placeholder smiled.", "idx": 0, "answers": [{"start": 10, "end": 12, "text": "Bob"}]}]}
    write(tmp_path / "val.jsonl", json.dumps(row) + "\n")
    with pytest.raises(DataFormatError, match=r"val.jsonl, line 1: query 0-0: no gold answer \['Bob'\]"):
        load_split("record", "validation", tmp_path)


def test_bom_unicode_and_line_separators(tmp_path):
    # UTF-8 BOM before the header, a U+2028 inside a sentence, CRLF line ends
    text = "\ufeffsentence\tlabel\r\nna\u00efve caf\u00e9 \u2028 film\t1\r\n\u6771\u4eac\t0\r\n"
    write(tmp_path / "train.tsv", text)
    rows = read_tsv(tmp_path / "train.tsv", required=("sentence", "label"))
    assert [r[1]["sentence"] for r in rows] == ["na\u00efve caf\u00e9 \u2028 film", "\u6771\u4eac"]
    assert [r[0] for r in rows] == [2, 3]
    exs = load_split("sst2", "train", FIXTURES / "bom")
    assert [(e.fields["sentence"], e.label) for e in exs] == [("the film is great ", 1), ("a dull , lifeless film ", 0)]


def test_bad_protocol_and_sizes():
    with pytest.raises(ValueError, match="protocol"):
        load_splits("sst2", protocol="fewshot", data_dir=FIXTURES / "bom")
    with pytest.raises(ValueError, match="num_train"):
        load_splits("sst2", protocol="glue", data_dir=FIXTURES / "bom", num_train=-1)


def test_no_hub_without_datasets(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pass data_dir"):
        load_split("sst2", "train")


def test_empty_text_fields_are_kept(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\n\t1\nfine\t0\n")
    exs = load_split("sst2", "train", tmp_path)
    assert [(e.fields["sentence"], e.label) for e in exs] == [("", 1), ("fine", 0)]
