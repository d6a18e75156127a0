"""JSON files the project writes: atomic writes and format-checked reads with user-facing errors."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import LorashearError


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON to a temp file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | Path, fmt: str, what: str) -> dict:
    """Read a JSON file whose ``format`` field must be ``fmt``; ``what`` names it in errors."""
    path = Path(path)
    if not path.is_file():
        raise LorashearError(f"{path}: no such {what} file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LorashearError(f"{path}: malformed {what} JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise LorashearError(f"{path}: not a lorashear {what} file")
    return data
