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
from .trace import write_json_atomic

SIDECAR = "lorashear.json"


def _base(model: nn.Module) -> nn.Module:
    """The plain transformers model: LoRA merged (on a copy) when ``model`` is a PEFT model."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


def _shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def stock_loadable(model: nn.Module, module_attrs: dict[str, dict]) -> tuple[bool, str]:
    """Can the stock config of ``model`` describe it? Instantiate the config on meta and compare."""
    from .loading import model_from_config

    cfg = copy.deepcopy(model.config)
    try:
        ref = model_from_config(cfg, meta=True)
    except Exception as exc:  # transformers validates configs (e.g. heads must divide hidden size)
        return False, f"the config cannot be instantiated: {str(exc).splitlines()[0]}"
    want = _shapes(model)
    have = _shapes(ref)
    for k, shape in want.items():
        if have.get(k) != shape:
            return False, f"config gives {k} shape {have.get(k)}, pruned model has {shape}"
    ref_mods = dict(ref.named_modules())
    for path, attrs in module_attrs.items():
        path = path[len("base_model.model."):] if path.startswith("base_model.model.") else path
        mod = ref_mods.get(path)
        for attr, val in attrs.items():
            got = getattr(mod, attr, None) if mod is not None else None
            got = list(got) if isinstance(got, tuple) else got
            if got != val and not (isinstance(val, float) and isinstance(got, float) and abs(got - val) <= 1e-12 * max(1.0, abs(val))):
                return False, f"config gives {path}.{attr} = {got}, pruned model needs {val}"
    return True, "a stock config describes every layer"


def save_pruned(model: nn.Module, out_dir: str | Path, *, report: CompressReport | None = None,
                tokenizer: Any = None, provenance: dict | None = None) -> dict:
    """Write the (LoRA-merged) model to ``out_dir`` atomically; returns the sidecar dict."""
    out_dir = Path(out_dir)
    base = _base(model)
    module_attrs = {}
    for path, attrs in (report.module_attrs if report else {}).items():
        if path.startswith("base_model.model."):
            path = path[len("base_model.model."):]
        path = path.replace(".base_layer", "")  # after merging, the wrapped layer takes the wrapper's place
        if ".lora_" in path or path.endswith(("lora_A", "lora_B")):
            continue  # adapters are merged away
        module_attrs.setdefault(path, {}).update(attrs)
    # a merged PEFT wrapper's attrs now live on the plain Linear; keep those of modules that still exist
    existing = dict(base.named_modules())
    module_attrs = {p: a for p, a in module_attrs.items() if p in existing}
    config = base.config
    invalid = _config_problem(config)
    stock, why = (False, f"transformers rejects the pruned config: {invalid}") if invalid else stock_loadable(base, module_attrs)
    if invalid:
        # e.g. transformers refuses hidden_size % num_attention_heads != 0 even with an explicit head_dim:
        # keep the pre-pruning config; the sidecar's shapes and attributes describe the real model
        if not report or not report.config_before:
            raise LorashearError(f"the pruned config is invalid ({why}) and no original config is known")
        config = type(base.config).from_dict(report.config_before)
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
