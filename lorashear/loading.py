"""Turn what a user points at (a model object, a model directory, a run folder, a config file) into a causal LM.

``load_model`` is the one loader behind every command and job (``eval``, ``analyze``, ``prune``, ``recover``,
the app): ``(model, tokenizer)`` on ``pick_device``'s device and dtype. ``load_causal_lm`` is the part of it
that returns the module alone (also on the meta device, or from a config file), for tracing and planning.

What they accept: ``"demo"`` (the shipped demo model); a named real model (``"smollm2-135m"``) or a ``.gguf``
file, converted once into a cached Hugging Face folder (``models.py``); a folder written by ``save_pruned``
(its ``lorashear.json`` sidecar says how to rebuild it, ``pruned_format.py``); a prune/recover run folder (its
``model/`` is used, and that is said on stderr); a PEFT adapter folder (its base, itself through this loader,
with the adapter on top); a config file (meta device or random init). A model that is not a decoder LM, or
whose saved weights do not cover the causal-LM head it would be loaded as (a ``BertModel`` folder), is
refused — never run with a randomly initialised head.

``check_model_source`` makes every refusal that the config alone allows — a missing path, a file where a
folder belongs, a config that is no decoder LM, a folder without weights — in milliseconds, before any weight
is read or any conversion runs; the loaders call it first, and a command can call it before its own expensive
set-up. Every user mistake here becomes a ``LorashearError`` that names the path and the cause, because this
is the first thing every CLI command and the app do with user input.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import DEMO_MODEL_DIR, check_data_spec, check_seq_len
from .errors import LorashearError
from .models import GGUF_SUFFIX, NAMED, cache_complete, gguf_folder, named_folder, package_gguf, resolve_named
from .pruned_format import (SIDECAR, causal_lm_class, decoder_class, from_pretrained_checked, load_config,
                            load_pruned, model_folder, model_from_config, read_sidecar, skeleton)

__all__ = ["check_causal_lm", "check_model_source", "preflight", "load_causal_lm", "load_config", "load_model", "model_from_config",
           "pick_device", "resolve_source"]

_CONFIG_SUFFIX = ".json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def pick_device(device: str | torch.device | None = None) -> tuple[torch.device, torch.dtype]:
    """(device, dtype): the given device, else CUDA + bf16 when available, else CPU + fp32."""
    if device is None:
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise LorashearError(f"unknown device {device!r}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise LorashearError("device 'cuda' requested but no CUDA GPU is available")
    return dev, (torch.bfloat16 if dev.type == "cuda" else torch.float32)


def check_causal_lm(model: nn.Module, where: str = "") -> nn.Module:
    """Refuse an in-memory Hugging Face model that is not its config's causal-LM class (e.g. a ``BertModel``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "model_type"):
        return model  # not a Hugging Face model: the caller says what it needs
    cls = causal_lm_class(config)
    if not isinstance(base, cls):
        raise LorashearError(f"{where or type(base).__name__}: a {type(base).__name__} is not a causal LM "
                             f"(the causal-LM class for '{config.model_type}' is {cls.__name__})")
    decoder_class(config)
    return model


# -------------------------------------------------------------------------------------------- checking
def check_model_source(source: Any, *, meta: bool = False) -> Path:
    """Refuse, from paths and configs alone (no weights read, no GGUF converted), what cannot load as a causal
    LM; returns what will be loaded: a model folder (a run folder's ``model/``), a config or ``.gguf`` file, or
    a named model's cache folder (which may not exist yet: it is converted on load).

    Cheap on purpose — milliseconds after transformers is imported — so that a command can call it before its
    own expensive set-up (reading data, tracing) and a user's typo costs no wait.
    """
    text = str(source)
    if text == "demo":
        return _check_path(Path(DEMO_MODEL_DIR), meta)
    if text in NAMED and not Path(text).exists():
        folder = named_folder(text)
        if cache_complete(folder):
            return _check_path(folder, meta)
        package_gguf(NAMED[text])  # refuses with the install command when the package is missing
        return folder
    return _check_path(Path(source).expanduser(), meta)


MODEL_FIELDS = ("model", "dense", "pruned")  # fields that name a model to load (a job form's, a run's inputs)


def preflight(values: dict[str, Any]) -> dict[str, str]:
    """``{field: one-line message}`` for what a run would refuse in its first seconds, found from paths and configs
    alone (no weights, no data read): a model field that cannot load as a causal LM (``check_model_source``), a
    data spec that names nothing (``data``: a spec or a list of them), a sequence length beyond the first model's
    context. One check before the expensive part, shared by the job forms and ``prune`` / ``recover`` themselves."""
    errors: dict[str, str] = {}
    config = None
    for name in MODEL_FIELDS:
        value = values.get(name)
        if value in (None, ""):
            continue
        try:
            where = check_model_source(value)
        except LorashearError as exc:
            errors[name] = str(exc).splitlines()[0]
            continue
        if config is None and where.is_dir() and (where / "config.json").is_file():
            config = load_config(where)
    data = values.get("data")
    specs = data.split(",") if isinstance(data, str) else list(data or ())
    try:
        for spec in specs:
            if isinstance(spec, str) and spec.strip():
                check_data_spec(spec.strip())
    except LorashearError as exc:
        errors["data"] = str(exc).splitlines()[0]
    if config is not None and isinstance(values.get("seq_len"), int):
        try:
            check_seq_len(values["seq_len"], config)
        except LorashearError as exc:
            errors["seq_len"] = str(exc).splitlines()[0]
    return errors


def _check_path(path: Path, meta: bool) -> Path:
    if not path.exists():
        what = {GGUF_SUFFIX: "GGUF file", _CONFIG_SUFFIX: "config file"}.get(path.suffix.lower(), "model folder")
        raise LorashearError(f"{what} not found: {path} (no such file or directory)")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == GGUF_SUFFIX:
            return path  # its architecture is read (metadata only) when it is converted
        if suffix != _CONFIG_SUFFIX:
            raise LorashearError(f"{path} is a file, not a model folder: give the folder that holds config.json "
                                 f"(or a config .json or a .gguf file)")
        decoder_class(load_config(path))
        return path
    path = model_folder(path)
    if (path / "adapter_config.json").is_file():
        if meta:
            raise LorashearError(f"{path}: a LoRA adapter needs real base weights; trace the base model with --meta instead")
        _check_path(_adapter_base(path), meta)
        return path
    decoder_class(load_config(path))
    read_sidecar(path)  # a malformed sidecar is refused here, not after the weights
    if not meta and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise LorashearError(f"{path}: has a config but no weights (*.safetensors); use --meta for structure only")
    return path


def _adapter_base(path: Path) -> Path:
    """The local base-model folder a PEFT adapter folder names (relative to the adapter, or as given)."""
    try:
        acfg = json.loads((path / "adapter_config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise LorashearError(f"{path}: cannot read adapter_config.json: {str(exc).splitlines()[0]}") from None
    named = str((acfg if isinstance(acfg, dict) else {}).get("base_model_name_or_path") or "")
    base = Path(named)
    if not base.is_absolute():
        base = (path / base) if (path / base).exists() else base
    if not named or not base.exists():
        raise LorashearError(f"{path}: the adapter's base model '{named}' is not a local path")
    return base.resolve()


# ------------------------------------------------------------------------------------------- loading
def resolve_source(source: Any) -> Path:
    """``"demo"`` → the shipped demo model's folder; a named model (``models.NAMED``) → its cached folder
    (converted on first use); a ``.gguf`` file → its cached converted folder; a run folder → its ``model/``;
    anything else → an expanded path."""
    if str(source) == "demo":
        return Path(DEMO_MODEL_DIR)
    if str(source) in NAMED and not Path(str(source)).exists():
        return resolve_named(str(source))
    path = Path(source).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX:
        return gguf_folder(path)
    return model_folder(path)


def load_causal_lm(source: Any, *, meta: bool = False, dtype: torch.dtype | None = None,
                   device: str | torch.device | None = None) -> nn.Module:
    """Return an eval-mode causal LM (the module alone) for ``source``, in ``dtype`` (default fp32).

    ``source`` may be an ``nn.Module`` (returned as is, once checked to be a causal LM), ``"demo"``, a named
    model, a ``.gguf`` file, a model directory (plain Hugging Face, pruned by ``save_pruned``, a run folder, or
    a PEFT adapter; weights loaded, or only the config when ``meta``), or a config JSON file (meta device when
    ``meta``, random init otherwise).
    """
    if isinstance(source, nn.Module):
        return check_causal_lm(source).eval()
    check_model_source(source, meta=meta)  # every refusal the config allows, before a conversion or a weight
    path = resolve_source(source)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        model = _load_adapter(path, meta=meta, dtype=dtype)
    else:
        config = load_config(path)
        cls = decoder_class(config)
        if meta or path.is_file():
            return skeleton(path, config, meta=meta)
        if (path / SIDECAR).is_file():
            model = load_pruned(path, dtype=dtype or torch.float32)
        else:
            model = from_pretrained_checked(cls, path, dtype=dtype)
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_model(source: Any, *, device: str | torch.device | None = None,
               dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from a model folder (or ``"demo"``, a named model, a ``.gguf`` file, a run
    folder), the model through ``load_causal_lm`` on ``pick_device``'s device and dtype unless given, in eval
    mode; the tokenizer from the folder (an adapter folder without one: its base model's)."""
    from transformers import AutoTokenizer

    dev, default_dtype = pick_device(device)
    checked = check_model_source(source)
    if checked.is_file() and checked.suffix.lower() != GGUF_SUFFIX:
        raise LorashearError(f"{checked} is a config file, not a model folder: a model with its tokenizer needs the "
                             "folder that holds config.json, the weights and the tokenizer")
    path = resolve_source(source)
    model = load_causal_lm(path, dtype=dtype or default_dtype, device=dev)
    tok_dir = path
    if not any((path / f).exists() for f in _TOKENIZER_FILES):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        tok_dir = Path(getattr(base, "name_or_path", "") or path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise LorashearError(f"cannot load the tokenizer in {tok_dir}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return model, tokenizer


def _load_adapter(path: Path, *, meta: bool, dtype: torch.dtype | None) -> nn.Module:
    """A PEFT adapter directory: its base model (a local path, loaded through ``load_causal_lm``) with the adapter on top."""
    from peft import PeftModel

    if meta:
        raise LorashearError(f"{path}: a LoRA adapter needs real base weights; trace the base model with --meta instead")
    base_path = _adapter_base(path)
    base = load_causal_lm(base_path, dtype=dtype)
    try:
        return PeftModel.from_pretrained(base, path).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise LorashearError(f"{path}: cannot load the adapter onto {base_path}: {str(exc).strip().splitlines()[0][:300]}") from None
