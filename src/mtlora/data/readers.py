"""Reading raw rows from JSONL, JSON, CSV, TSV and SQuAD files, or from a `datasets` hub name.

Every row keeps where it came from (`file:line`), so a task that rejects a row can say exactly which.
Delimited files are checked row by row: too few or too many fields, or text after a closing quote, is
an error at its line. A TSV's quoted field may not hold tabs or line breaks (GLUE's bare quotes would
swallow rows) unless `quoting: multiline` says the file quotes such fields. A CSV's may, as multi-line
texts are real, so a stray opening quote that closes cleanly on a later line merges those rows
unnoticed. With `quoting: none` every row is one line.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from mtlora.config import DATA_DIR_ENV, SourceConfig
from mtlora.errors import DataError

SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".txt": "tsv"}

NOT_SQUAD_ARTICLES = "'articles' only applies to SQuAD JSON files"

# GLUE sentences can be longer than the csv module's default field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class Row:
    values: dict[str, Any]
    where: str
    # Where a source that gives every row the same columns names them (a CSV's header line): a column
    # none of its rows has is told there, not at whichever row is read first (a sampled one, with limit).
    columns_where: str | None = None

    def missing_field(self, column: str, about: str, fix: str) -> DataError:
        present = ", ".join(map(str, self.values))
        if self.columns_where is not None:
            return DataError(self.columns_where, f"no column '{column}' {about}; columns: {present}", fix)
        return DataError(self.where, f"missing field '{column}' {about}; fields present: {present}", fix)


def read_rows(source: SourceConfig, data_dir: Path, seed: int = 0, role: str = "train") -> list[Row]:
    """Read every row of `source`, the data of `role` (train, validation or test: a hub source reads
    that split unless it names another); a relative path is taken from `data_dir`.

    Raises:
        DataError: the file is missing or unreadable, or a row is malformed (names the line).
    """
    rows = _read_hub(source, role) if source.hub is not None else _read_file(source, data_dir)
    if source.join or source.recode:
        rows = [_reshaped(row, source) for row in rows]
    if source.limit is not None and source.limit < len(rows):
        keep = sorted(random.Random(seed).sample(range(len(rows)), source.limit))
        rows = [rows[i] for i in keep]
    return rows


def _reshaped(row: Row, source: SourceConfig) -> Row:
    """Apply the source's `join` (new columns from several) and `recode` (values renamed, strictly)."""
    values = dict(row.values)
    for column, parts in source.join.items():
        missing = [p for p in parts if values.get(p) is None]
        if missing:
            raise DataError(row.where, f"join: no field {missing[0]!r} to build '{column}' from; "
                            f"fields present: {', '.join(map(str, values))}")
        values[column] = " ".join(str(values[p]).strip() for p in parts)
    for column, codes in source.recode.items():
        raw = values.get(column)
        if raw is None:
            raise DataError(row.where, f"recode: no field {column!r}; fields present: {', '.join(map(str, values))}")
        if str(raw) not in codes:
            raise DataError(row.where, f"recode: value {raw!r} of field {column!r} is not one of "
                            f"{', '.join(codes)}", "list it under recode")
        values[column] = codes[str(raw)]
    return Row(values, row.where, row.columns_where)


def source_format(source: SourceConfig, path: Path) -> str:
    if source.format is not None:
        return source.format
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            str(path),
            f"cannot tell the format from the suffix '{path.suffix}'",
            f"set format: to one of {', '.join(sorted(set(SUFFIX_FORMATS.values()) | {'squad', 'dream'}))}",
        )
    return fmt


def source_location(source: SourceConfig, data_dir: Path, role: str) -> str:
    """The file a source reads (relative paths are taken from `data_dir`), or its hub name and split."""
    return str(_file_path(source, data_dir)) if source.path is not None else source.describe(role)


def _file_path(source: SourceConfig, data_dir: Path) -> Path:
    assert source.path is not None
    path = Path(source.path)
    return path if path.is_absolute() else data_dir / path


def _read_file(source: SourceConfig, data_dir: Path) -> list[Row]:
    path = _file_path(source, data_dir)
    if path.is_dir():
        raise DataError(str(path), "is a directory, not a file", "name a file in it: data paths name one file each")
    if not path.is_file():
        # $MTLORA_DATA_DIR, where set, overrides the project file's data_dir.
        where = f"${DATA_DIR_ENV}" if os.environ.get(DATA_DIR_ENV) else \
            f"data_dir in the project file, or ${DATA_DIR_ENV},"
        fix = None if Path(cast(str, source.path)).is_absolute() else (  # _file_path has checked it is set
            f"paths are relative to data_dir {data_dir}; set {where} to the folder that holds the data")
        raise DataError(str(path), "file not found", fix)
    fmt = source_format(source, path)
    if source.articles is not None and fmt not in ("squad", "json"):  # a .json file may turn out to be SQuAD
        raise DataError(str(path), NOT_SQUAD_ARTICLES)
    readers = {"jsonl": _read_jsonl, "json": _read_json, "csv": _read_delimited, "tsv": _read_delimited,
               "squad": _read_squad, "dream": _read_dream}
    try:
        return readers[fmt](path, source, fmt)
    except UnicodeDecodeError:
        raise _undecodable(path, source) from None


def _undecodable(path: Path, source: SourceConfig) -> DataError:
    """Where the file stops being `source.encoding` text. A reading decoder counts its offset from its
    current chunk, so the whole file is decoded again to place the byte."""
    data = path.read_bytes()
    # Plain UTF-8 for utf-8-sig, whose offsets would skip a byte-order mark.
    encoding = "utf-8" if codecs.lookup(source.encoding).name.startswith("utf-8") else source.encoding
    fix = "set encoding: in the source, e.g. latin-1 or cp1252"
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode(encoding)
        line = 1 + before.count("\n") + before.count("\r") - before.count("\r\n")  # as a text file counts lines
        return DataError(f"{path}:{line}", f"not valid {source.encoding} text: byte 0x{data[exc.start]:02x} "
                                           f"at offset {exc.start}", fix)
    return DataError(str(path), f"not valid {source.encoding} text (it changed while read)", fix)


def _encoding(source: SourceConfig) -> str:
    # utf-8-sig strips a byte-order mark (MRPC has one) and reads plain UTF-8 unchanged.
    return "utf-8-sig" if codecs.lookup(source.encoding).name == "utf-8" else source.encoding


def _read_jsonl(path: Path, source: SourceConfig, fmt: str) -> list[Row]:
    rows = []
    with path.open(encoding=_encoding(source)) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(where, f"not valid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}") from None
            if not isinstance(value, dict):
                raise DataError(where, f"expected a JSON object, got {type(value).__name__}")
            rows.append(Row(value, where))
    return rows


def _read_json(path: Path, source: SourceConfig, fmt: str) -> list[Row]:
    value = _load_json(path, source)
    # SQuAD files are named .json too: told by their layout, unless format: json says they are plain records.
    if source.format is None and _is_squad(value):
        return _squad_rows(path, source, value)
    if source.articles is not None:
        raise DataError(str(path), NOT_SQUAD_ARTICLES)
    records = value.get("data") if isinstance(value, dict) else value
    if not isinstance(records, list):
        raise DataError(str(path), "expected a JSON list of objects (or {'data': [...]})")
    rows = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            dream = isinstance(record, list) and len(record) == 3  # [dialogue turns, questions, id]
            raise DataError(f"{path}: item {i}", f"expected a JSON object, got {type(record).__name__}",
                            "a DREAM file? set format: dream" if dream else None)
        rows.append(Row(record, f"{path}: item {i}"))
    return rows


def _load_json(path: Path, source: SourceConfig) -> Any:
    try:
        return json.loads(path.read_text(encoding=_encoding(source)))
    except json.JSONDecodeError as exc:
        # A whole document ending where a next one starts is JSON Lines saved under a .json name.
        lines_hint = "one JSON object per line is JSON Lines: name the file .jsonl or set format: jsonl"
        raise DataError(f"{path}:{exc.lineno}", f"not valid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}",
                        lines_hint if exc.msg == "Extra data" else None) from None


def _is_squad(value: Any) -> bool:
    """SQuAD's layout: {'data': [{'paragraphs': [...]}, ...]}."""
    articles = value.get("data") if isinstance(value, dict) else None
    return (isinstance(articles, list) and bool(articles) and isinstance(articles[0], dict)
            and isinstance(articles[0].get("paragraphs"), list))


def _read_squad(path: Path, source: SourceConfig, fmt: str) -> list[Row]:
    return _squad_rows(path, source, _load_json(path, source))


def _squad_rows(path: Path, source: SourceConfig, value: Any) -> list[Row]:
    """Flatten SQuAD v1.1 JSON to one row per question: id, question, context, answers."""
    articles = value.get("data") if isinstance(value, dict) else None
    if not isinstance(articles, list):
        raise DataError(str(path), "not SQuAD JSON: expected {'data': [{'paragraphs': [...]}, ...]}")
    start, end = source.articles or (0, len(articles))
    if end > len(articles):
        raise DataError(str(path), f"articles [{start}, {end}) asked for, but the file has {len(articles)}")
    return [row for a in range(start, end) for row in _squad_article_rows(f"{path}: data[{a}]", articles[a])]


def _squad_article_rows(where: str, article: Any) -> list[Row]:
    """One row per question of an article; a misspelt key would drop its questions, so the shape is checked."""
    rows = []
    for p, paragraph in enumerate(_squad_list(article, "paragraphs", where)):
        paragraph_where = f"{where}.paragraphs[{p}]"
        for q, qa in enumerate(_squad_list(paragraph, "qas", paragraph_where)):
            qa_where = f"{paragraph_where}.qas[{q}]"
            _squad_object(qa, qa_where)
            values = {
                "id": qa.get("id", qa_where),
                "title": article.get("title", ""),
                "question": qa.get("question"),
                "context": paragraph.get("context"),
                "answers": qa.get("answers"),
            }
            rows.append(Row(values, qa_where))
    return rows


def _squad_list(parent: Any, key: str, where: str) -> list[Any]:
    """`parent[key]`, a list in SQuAD's layout."""
    _squad_object(parent, where)
    items = parent.get(key)
    if not isinstance(items, list):
        found = "it is missing" if key not in parent else f"it is {type(items).__name__}"
        raise DataError(where, f"no '{key}' list ({found}; keys present: {', '.join(map(str, parent))})",
                        "SQuAD v1.1 nests {'data': [{'paragraphs': [{'context', 'qas': [...]}]}]}")
    return items


def _squad_object(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise DataError(where, f"expected a JSON object, got {type(value).__name__}")


def _read_dream(path: Path, source: SourceConfig, fmt: str) -> list[Row]:
    """Flatten DREAM JSON (`[[turns, questions, id], ...]`) to one row per question:
    id, dialogue (the turns, one per line), question, options (the `choice` list) and answer (an option's text)."""
    value = _load_json(path, source)
    if not isinstance(value, list):
        raise DataError(str(path), "not DREAM JSON: expected a list of [dialogue turns, questions, id] items")
    rows = []
    for d, item in enumerate(value):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], list) and isinstance(item[1], list)):
            raise DataError(f"{path}: item {d}", "expected [dialogue turns, questions, id]")
        turns, questions, dialogue_id = item
        for q, question in enumerate(questions):
            where = f"{path}: item {d} ({dialogue_id}) question {q}"
            if not isinstance(question, dict):
                raise DataError(where, f"expected a question object, got {type(question).__name__}")
            values = {"id": f"{dialogue_id}-{q}", "dialogue": "\n".join(map(str, turns)),
                      "question": question.get("question"), "options": question.get("choice"),
                      "answer": question.get("answer")}
            rows.append(Row(values, where))
    return rows


def _read_delimited(path: Path, source: SourceConfig, fmt: str) -> list[Row]:
    delimiter = "\t" if fmt == "tsv" else ","
    # csv.reader takes the constants' literal values: the conditional would widen them to int.
    quoting: Literal[0, 3] = csv.QUOTE_NONE if source.quoting == "none" else csv.QUOTE_MINIMAL
    rows: list[Row] = []
    with path.open(encoding=_encoding(source), newline="") as handle:
        # strict: text after a closing quote (a stray quote that opened a field running over rows) is an error.
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting, strict=True)
        header = source.columns
        line = 1
        header_where = str(path)
        if header is None:
            header, header_line = _header(reader, path, fmt)
            header = [name.strip() for name in header]  # "text, label", as hand-written CSVs space them
            header_where = f"{path}:{header_line}"
            line = reader.line_num + 1
        if header_where != str(path) and (hint := _other_delimiter(header, fmt)):
            raise DataError(header_where, f"the header line reads as one {fmt.upper()} field", hint)
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:  # a dict row would keep only the last of them
            raise DataError(header_where,
                            f"column names repeat: {', '.join(repeated)}",
                            "give each column its own name (or name them with columns:)")
        width = len(header)
        try:
            for fields in reader:
                where = f"{path}:{line}"
                line = reader.line_num + 1
                if not fields or fields == [""]:
                    continue
                # Dropped only when asked: an unquoted delimiter inside a text also makes extra fields.
                too_many = len(fields) > width and source.extra_fields == "error"
                if len(fields) < width or too_many:
                    raise DataError(
                        where,
                        f"expected {width} {fmt.upper()} fields ({', '.join(header)}), found {len(fields)}",
                        # The first row, when it does not split, tells of the file's delimiter, not of one row.
                        (not rows and _other_delimiter(fields, fmt))
                        or _width_hint(len(fields) < width, quoting == csv.QUOTE_MINIMAL),
                    )
                if fmt == "tsv" and source.quoting == "minimal" and any("\t" in f or "\n" in f for f in fields):
                    # A quote opened inside GLUE-style text swallows tabs and lines until the next quote.
                    raise DataError(where, "a quoted field spans tabs or lines",
                                    "set quoting: none for this TSV if its quotes are part of the text, as in GLUE; "
                                    "quoting: multiline if the file quotes fields that hold tabs or line breaks, "
                                    "as pandas and Excel do")
                rows.append(Row(dict(zip(header, fields, strict=False)), where, header_where))
        except csv.Error as exc:  # raised by the reader, at the row that began on `line`
            raise _malformed(path, line, exc, fmt) from None
    return rows


def _header(reader: Any, path: Path, fmt: str) -> tuple[list[str], int]:
    """The header and its line: the first line holding more than spaces and delimiters (blank lines above
    a header are common in exports, and would make a header of no columns)."""
    line = 1
    try:
        for fields in reader:
            if any(field.strip() for field in fields):
                return fields, line
            line = reader.line_num + 1
    except csv.Error as exc:
        raise _malformed(path, line, exc, fmt) from None
    raise DataError(str(path), "the file is empty (no header line)")


def _malformed(path: Path, line: int, error: csv.Error, fmt: str) -> DataError:
    if "expected after" not in str(error):
        return DataError(f"{path}:{line}", f"not readable as {fmt.upper()}: {error}")
    fix = ("write a quote inside a quoted text twice (\"\"), or leave the text unquoted" if fmt == "csv"
           else "GLUE-style TSVs hold bare quotes: set quoting: none")
    # The csv module's message holds the delimiter itself: a tab would print as blank space.
    expected = str(error).replace("\t", "\\t")
    return DataError(f"{path}:{line}", f"a quoted field goes on past its closing quote ({expected})", fix)


def _other_delimiter(fields: list[str], fmt: str) -> str | None:
    """What to set when a line that split into one field holds another format's delimiter."""
    if len(fields) != 1:
        return None
    if fmt == "csv" and "\t" in fields[0]:
        return "the file looks tab-separated: set format: tsv"
    if fmt == "tsv" and "," in fields[0]:
        return "the file looks comma-separated: set format: csv"
    if ";" in fields[0]:
        return "the file looks semicolon-separated, which mtlora does not read: save it with commas (CSV) or tabs (TSV)"
    return None


def _width_hint(too_few: bool, quoted: bool) -> str:
    if too_few:
        return "a field is missing on this line" + ("; or a quote character in a text opened a quoted field that "
                                                    "ran on: then set quoting: none" if quoted else "")
    split = "a text holding the delimiter unquoted" + (" (or a stray quote character: quoting: none)" if quoted else "")
    return f"{split}? rows whose trailing fields are to be dropped need extra_fields: ignore"


def _read_hub(source: SourceConfig, role: str) -> list[Row]:
    """The online path: `datasets.load_dataset(hub, subset, split=...)`."""
    import datasets

    name = source.describe(role)
    try:
        dataset = datasets.load_dataset(source.hub, source.subset, split=source.hub_split(role))
    except Exception as exc:  # datasets raises many types for network, name and split problems
        raise DataError(name, f"could not load from the datasets hub: {exc}",
                        "check the name, subset and split, and that you are online") from exc
    return [Row(dict(record), f"{name} row {i}", name) for i, record in enumerate(dataset)]
