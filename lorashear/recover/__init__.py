"""Knowledge recovery: a data mixture that follows where the pruned model lags (``update_weights``), then
instruction tuning — ``recover`` is the one call behind the CLI, the job and the app. Attributes load lazily, so
``lorashear.recover.settings`` (the CLI's and the job form's schema) is importable without torch."""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"RecoverSettings": ".settings", "recover": ".run", "update_weights": ".mixture"}
__all__ = ["RecoverSettings", "recover", "update_weights"]


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'lorashear.recover' has no attribute {name!r}")
    return getattr(importlib.import_module(mod, __name__), name)
