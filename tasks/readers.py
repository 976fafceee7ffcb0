"""Reading original-format files strictly: TSV (GLUE), JSON lines (SuperGLUE), JSON (SQuAD, DROP).

Every problem is an error that names the file and, for row formats, the 1-based line number;
nothing is skipped silently. Files are UTF-8; a UTF-8 byte-order mark (MRPC has one) is dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


class DataFormatError(ValueError):
    """A file does not have the format its task expects."""

    def __init__(self, path: Path | str, line: int | None, message: str):
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")
        self.path, self.line = Path(path), line


def read_text(path: Path, encodings: tuple[str, ...] = ("utf-8-sig",)) -> str:
    """The whole file as text, trying `encodings` in order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
    for enc in encodings:
        try:
            text = raw.decode(enc)
        except UnicodeDecodeError:
            continue
        return text[1:] if text.startswith("\ufeff") else text
    raise DataFormatError(path, None, f"not decodable as any of {', '.join(encodings)}")


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) without the line terminator; only \\n (and \\r\\n) end a line, so a
    Unicode line separator inside a sentence stays in it. A final empty line is not yielded."""
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    for i, line in enumerate(parts, start=1):
        yield i, line[:-1] if line.endswith("\r") else line


def read_tsv(path: Path, header: bool = True, columns: tuple[str, ...] | None = None,
             required: tuple[str, ...] = ()) -> list[tuple[int, dict[str, str]]]:
    """Rows of a tab-separated file with no quoting (the GLUE convention), as (line, {column: value}).

    header=True: the first line names the columns and `required` must be among them.
    header=False: `columns` names them. A row whose field count differs is an error.
    """
    path = Path(path)
    lines = _lines(read_text(path))
    if header:
        try:
            _, first = next(lines)
        except StopIteration:
            raise DataFormatError(path, 1, "empty file, expected a header line") from None
        names = tuple(first.split("\t"))
        missing = [c for c in required if c not in names]
        if missing:
            raise DataFormatError(path, 1, f"header {list(names)} lacks column(s) {missing}")
    else:
        assert columns is not None
        names = columns
    rows = []
    for lineno, line in lines:
        if line == "" or line.isspace():
            raise DataFormatError(path, lineno, "empty line")
        values = line.split("\t")
        if len(values) != len(names):
            raise DataFormatError(path, lineno, f"{len(values)} tab-separated fields, expected {len(names)} ({', '.join(names)})")
        rows.append((lineno, dict(zip(names, values))))
    return rows


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """Objects of a JSON-lines file, as (line, object); each must have the `required` keys."""
    path = Path(path)
    rows = []
    for lineno, line in _lines(read_text(path)):
        if line.strip() == "":
            raise DataFormatError(path, lineno, "empty line")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        check_keys(obj, required, path, lineno)
        rows.append((lineno, obj))
    return rows


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataFormatError(path, e.lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None


def check_keys(obj: dict, keys: tuple[str, ...], path: Path, line: int | None, what: str = "") -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataFormatError(path, line, f"{what or 'row'} lacks key(s) {missing} (has {sorted(obj)})")


def label_index(value: Any, names: tuple[str, ...], path: Path, line: int | None,
                mapping: dict[Any, int] | None = None) -> int:
    """A label given as a name (or, with `mapping`, any listed value) -> its index in `names`."""
    for key, index in (mapping or {}).items():
        if type(key) is type(value) and key == value:  # strict: 1 is not True, "1" is not 1
            return index
    if isinstance(value, str) and value in names:
        return names.index(value)
    allowed = list(mapping) if mapping is not None else list(names)
    raise DataFormatError(path, line, f"label {value!r} is not one of {allowed}")
