"""Groups on disk (``lorashear.groups/1`` JSON), written atomically."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..jsonio import read_json, write_json_atomic
from .group import Group, Member


def groups_to_json(groups: list[Group]) -> dict:
    return {"format": "lorashear.groups/1", "groups": [asdict(g) for g in groups]}


def save_groups(groups: list[Group], path: str | Path) -> Path:
    return write_json_atomic(path, groups_to_json(groups))


def load_groups(path: str | Path) -> list[Group]:
    data = read_json(path, "lorashear.groups/1", "groups")
    out = []
    for d in data["groups"]:
        d = dict(d)
        d["members"] = [Member(**m) for m in d["members"]]
        out.append(Group(**d))
    return out
