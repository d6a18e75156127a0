"""Turn what a user points at (a model object, a model directory, a config file) into a causal-LM module.

Every user mistake here becomes a ``LorashearError`` that names the path and the cause, because this is
the first thing every CLI command and the app do with user input.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import LorashearError


def load_config(source: str | Path):
    """Read a HF config from a ``config.json`` file or a model directory."""
    from transformers import AutoConfig

    path = Path(source)
    if not path.exists():
        raise LorashearError(f"{path}: no such file or directory")
    cfg_file = path / "config.json" if path.is_dir() else path
    if not cfg_file.is_file():
        raise LorashearError(f"{path}: no config.json in this directory")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise LorashearError(f"{cfg_file}: malformed config JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise LorashearError(f"{cfg_file}: not a Hugging Face config (no 'model_type' field)")
    try:
        return AutoConfig.for_model(**raw) if path.is_file() else AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise LorashearError(f"{cfg_file}: cannot build a config from it: {exc}") from None


def _causal_lm_class(config):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise LorashearError(
            f"model_type '{config.model_type}' ({type(config).__name__}) is not a causal LM: "
            "AutoModelForCausalLM has no class for it"
        ) from None


def model_from_config(config, *, meta: bool = False, seed: int | None = 0) -> nn.Module:
    """Build a causal LM from a config: on the meta device (structure only, no memory) or random-init."""
    cls = _causal_lm_class(config)
    if meta:
        with torch.device("meta"):
            model = cls._from_config(config)
    else:
        if seed is not None:
            torch.manual_seed(seed)
        model = cls._from_config(config)
    return model.eval()


def load_model(source: Any, *, meta: bool = False, dtype: torch.dtype | None = None) -> nn.Module:
    """Return an eval-mode causal LM for ``source``.

    ``source`` may be an ``nn.Module`` (returned as is), a model directory (weights loaded, or only the
    config when ``meta``), or a config JSON file (meta device when ``meta``, random init otherwise).
    """
    if isinstance(source, nn.Module):
        return source.eval()
    path = Path(source)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return _load_adapter(path, meta=meta, dtype=dtype)
    config = load_config(path)
    _causal_lm_class(config)
    if meta or path.is_file():
        return model_from_config(config, meta=meta)
    from transformers import AutoModelForCausalLM

    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise LorashearError(f"{path}: has a config but no weights (*.safetensors); use --meta for structure only")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except (OSError, ValueError, RuntimeError) as exc:
        raise LorashearError(f"{path}: cannot load the model: {str(exc).splitlines()[0]}") from None
    return model.eval()


def _load_adapter(path: Path, *, meta: bool, dtype: torch.dtype | None) -> nn.Module:
    """A PEFT adapter directory: its base model (a local path) with the adapter on top."""
    from peft import PeftConfig, PeftModel

    if meta:
        raise LorashearError(f"{path}: a LoRA adapter needs real base weights; trace the base model with --meta instead")
    try:
        pcfg = PeftConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise LorashearError(f"{path}: cannot read adapter_config.json: {str(exc).splitlines()[0]}") from None
    base_path = Path(pcfg.base_model_name_or_path or "")
    if not base_path.is_absolute():
        base_path = (path / base_path) if (path / base_path).exists() else base_path
    if not base_path.exists():
        raise LorashearError(f"{path}: the adapter's base model '{pcfg.base_model_name_or_path}' is not a local path")
    base = load_model(base_path, dtype=dtype)
    return PeftModel.from_pretrained(base, path).eval()
