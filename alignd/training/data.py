"""Data for training: the shipped prompt sets and JSONL files with line-numbered errors."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "data" / "prompts"
SPLITS = ("train", "eval")


class DataError(ValueError):
    """A malformed input file; the message names the file and line."""


def load_prompts(source: str) -> list[str]:
    """A shipped split ("train" or "eval") or a text file with one instruction per line."""
    path = PROMPTS_DIR / f"{source}.txt" if source in SPLITS else Path(source)
    if not path.is_file():
        raise DataError(f"prompts {source!r}: not a shipped split {list(SPLITS)} nor a file")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def read_jsonl(path: str | Path, required: Mapping[str, type | tuple[type, ...]]) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file, each checked to have `required` fields of the given types."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object")
            for name, kind in required.items():
                if name not in row:
                    raise DataError(f"{path}:{number}: missing field {name!r}")
                if not isinstance(row[name], kind) or (isinstance(row[name], bool) and kind is not bool):
                    raise DataError(f"{path}:{number}: field {name!r} has the wrong type")
            yield row


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def data_hash(paths: Sequence[str | Path]) -> str:
    """sha256 over the files' bytes, to record what a head was trained on."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]
