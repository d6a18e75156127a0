"""JSON files the project writes: atomic writes and format-checked reads with user-facing errors."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

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


def write_dir_atomic(final: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary sibling folder with ``write(tmp)``, then rename it to ``final`` (replacing it): a reader
    (or a resumed run) never sees a half-written folder, and a failure leaves nothing behind."""
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def numbered_dirs(root: str | Path, prefix: str) -> list[Path]:
    """``root/PREFIXN`` folders in increasing N (checkpoints)."""
    found = [p for p in Path(root).glob(f"{prefix}*") if p.is_dir() and p.name[len(prefix):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(prefix):]))


def keep_newest(root: str | Path, prefix: str, n: int = 2) -> None:
    """Delete all but the ``n`` newest ``root/PREFIXN`` folders."""
    import shutil

    for old in numbered_dirs(root, prefix)[:-n]:
        shutil.rmtree(old, ignore_errors=True)
