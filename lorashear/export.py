"""Save and reload pruned models: safetensors + config + tokenizer + a ``lorashear.json`` sidecar.

Two cases, and the sidecar says which one was produced:

* ``stock`` — every layer kept the same sizes and a stock config describes them (checked, not assumed: the
  config is instantiated on the meta device and every parameter shape and changed module attribute is
  compared). ``AutoModelForCausalLM.from_pretrained(dir)`` loads it.
* ``lorashear`` — per-layer sizes differ, or the architecture cannot express the new sizes in its config
  (e.g. GPT-2 derives head_dim from n_embd / n_head). ``load_pruned(dir)`` rebuilds the model from the
  config, resizes each parameter to its saved shape and restores the recorded module attributes.

Never pickles modules: weights are safetensors, everything else is JSON.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .compress import CompressReport
from .errors import LorashearError
from .jsonio import write_json_atomic

SIDECAR = "lorashear.json"


def _base(model: nn.Module) -> nn.Module:
    """The plain transformers model: LoRA merged (on a copy) when ``model`` is a PEFT model."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _scalars(mod: nn.Module) -> dict[str, Any]:
    """The plain size/epsilon attributes a module's forward may read (ints, floats, int tuples)."""
    out = {}
    for attr, val in vars(mod).items():
        if attr.startswith("_") or isinstance(val, bool):
            continue
        if isinstance(val, (int, float)) or (isinstance(val, tuple) and all(isinstance(v, int) for v in val)):
            out[attr] = list(val) if isinstance(val, tuple) else val
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-12 * max(1.0, abs(a), abs(b))
    return a == b


def config_overrides(model: nn.Module, config) -> tuple[dict[str, dict[str, Any]], str | None]:
    """What a model built from ``config`` gets wrong about ``model``: (attribute overrides, shape mismatch).

    Compares every parameter shape and every scalar module attribute (sizes, eps) — not only the ones
    compress changed: a config field shared by several modules (Qwen3's ``rms_norm_eps`` feeds the hidden
    norms and the per-head q/k norms) must not silently change one of them on reload.
    """
    from .loading import model_from_config

    ref = model_from_config(copy.deepcopy(config), meta=True)
    have = _shapes(ref)
    mismatch = next((f"config gives {k} shape {have.get(k)}, pruned model has {v}" for k, v in _shapes(model).items() if have.get(k) != v), None)
    ref_mods = dict(ref.named_modules())
    overrides: dict[str, dict[str, Any]] = {}
    for path, mod in model.named_modules():
        refmod = ref_mods.get(path)
        if refmod is None:
            continue
        ref_vals = _scalars(refmod)
        for attr, val in _scalars(mod).items():
            if attr in ref_vals and not _same(ref_vals[attr], val):
                overrides.setdefault(path, {})[attr] = val
    return overrides, mismatch


def save_pruned(model: nn.Module, out_dir: str | Path, *, report: CompressReport | None = None,
                tokenizer: Any = None, provenance: dict | None = None) -> dict:
    """Write the (LoRA-merged) model to ``out_dir`` atomically; returns the sidecar dict."""
    out_dir = Path(out_dir)
    base = _base(model)
    config = base.config
    invalid = _config_problem(config)
    if invalid:
        # e.g. transformers refuses hidden_size % num_attention_heads != 0 even with an explicit head_dim:
        # keep the pre-pruning config; the sidecar's shapes and attributes describe the real model
        if not report or not report.config_before:
            raise LorashearError(f"the pruned config is invalid ({invalid}) and no original config is known")
        config = type(base.config).from_dict(report.config_before)
    module_attrs, mismatch = config_overrides(base, config)
    stock = not invalid and mismatch is None and not module_attrs
    if invalid:
        why = f"transformers rejects the pruned config: {invalid}"
    elif mismatch:
        why = mismatch
    elif module_attrs:
        path, attrs = next(iter(module_attrs.items()))
        attr, val = next(iter(attrs.items()))
        why = f"the config cannot give {path}.{attr} = {val}"
    else:
        why = "a stock config describes every layer"
    sidecar = {
        "format": "lorashear.pruned/1",
        "case": "stock" if stock else "lorashear",
        "case_reason": why,
        "model_class": type(base).__name__,
        "n_params": sum(p.numel() for p in base.parameters()),
        "param_shapes": _shapes(base),
        "module_attrs": module_attrs,
        "removed": report.removed if report else {},
        "layer_sizes": report.layer_sizes if report else {},
        "params_before": report.params_before if report else None,
        "provenance": provenance or {},
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    saved_config, base.config = base.config, config
    try:
        base.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json_atomic(tmp / SIDECAR, sidecar)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        base.config = saved_config
    return sidecar


def _config_problem(config) -> str | None:
    """Why transformers would refuse to save/load this config, or None."""
    from .loading import model_from_config

    try:
        if hasattr(config, "validate"):
            config.validate()
        model_from_config(copy.deepcopy(config), meta=True)  # some checks live in module constructors
    except Exception as exc:
        cause = exc.__cause__ or exc
        return str(cause).strip().splitlines()[0]
    return None


def read_sidecar(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / SIDECAR
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LorashearError(f"{path}: malformed sidecar JSON (line {exc.lineno}: {exc.msg})") from None


def load_pruned(model_dir: str | Path, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load any model written by ``save_pruned`` (or a plain HF model directory)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from .loading import _causal_lm_class, load_config

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LorashearError(f"{model_dir}: no such model directory")
    side = read_sidecar(model_dir)
    if side is None or side.get("case") == "stock":
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    config = load_config(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise LorashearError(f"{model_dir}: no *.safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    with no_init_weights():
        model = _causal_lm_class(config)._from_config(config, dtype=dtype)
    for name, shape in side["param_shapes"].items():
        owner, _, attr = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        if attr in mod._parameters and list(mod._parameters[attr].shape) != shape:
            mod._parameters[attr] = nn.Parameter(torch.empty(shape, dtype=dtype))
    mods = dict(model.named_modules())
    for path, attrs in side.get("module_attrs", {}).items():
        mod = mods.get(path)
        if mod is None:
            raise LorashearError(f"{model_dir}: sidecar names module '{path}' that the config does not build")
        for attr, val in attrs.items():
            setattr(mod, attr, tuple(val) if isinstance(val, list) else val)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    tied = getattr(model, "_tied_weights_keys", None) or {}
    really_missing = [k for k in missing if k not in tied]  # tied keys (lm_head) are not stored twice
    if unexpected or really_missing:
        raise LorashearError(f"{model_dir}: weights do not match the sidecar (missing {really_missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()
