"""The model folder on disk: how lorashear reads a Hugging Face causal-LM folder, and the pruned-folder format.

A pruned folder is a Hugging Face folder (safetensors + config + tokenizer) plus the ``lorashear.json``
sidecar that ``export.save_pruned`` writes. Its ``case`` says how it reloads: ``stock`` (the config describes
every layer; stock ``from_pretrained`` works) or ``lorashear`` (per-layer sizes differ: the model is built from
the config, each parameter resized to its saved ``param_shapes`` and the recorded ``module_attrs`` restored,
then the weights are loaded). A prune or recover run folder holds its model in ``RUN/model`` next to
``RUN/run.json``; wherever a model folder is expected, such a run folder stands for its model.

Everything that must agree between the writer (``export``) and the readers (``loading``, ``load_pruned``)
lives here, in one module below both: the sidecar's name and reading, the per-layer reshape, and how a config
is turned into its causal-LM class (refusing a config that is no decoder LM from the config alone, before
any weight is read).
"""
from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import LorashearError
from .jsonio import write_json_atomic

SIDECAR = "lorashear.json"
SIDECAR_FORMAT = "lorashear.pruned/1"
ADAPTER = "adapter"  # subfolder of a pruned folder saved with merge_lora=False
RUN_FILE = "run.json"  # a prune/recover run folder: RUN/run.json ...
RUN_MODEL = "model"  # ... and its model in RUN/model


# ------------------------------------------------------------------------------------------- configs
def load_config(source: str | Path):
    """Read a HF config from a ``config.json`` file or a model directory."""
    from transformers import AutoConfig

    path = Path(source)
    if not path.exists():
        raise LorashearError(f"{path}: no such file or directory")
    cfg_file = path / "config.json" if path.is_dir() else path
    if not cfg_file.is_file():
        raise LorashearError(f"{path} is not a Hugging Face model folder (no config.json)")
    try:
        raw = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise LorashearError(f"{cfg_file}: malformed config JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise LorashearError(f"{cfg_file}: not a config JSON (not text)") from None
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise LorashearError(f"{cfg_file}: not a Hugging Face config (no 'model_type' field)")
    try:
        return AutoConfig.for_model(**raw) if path.is_file() else AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, TypeError) as exc:
        raise LorashearError(f"{cfg_file}: cannot build a config from it: {exc}") from None


def causal_lm_class(config) -> type:
    """The ``AutoModelForCausalLM`` class for ``config``; a config with none is refused."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM._model_mapping[type(config)]
    except KeyError:
        raise LorashearError(
            f"model_type '{config.model_type}' ({type(config).__name__}) is not a causal LM: "
            "AutoModelForCausalLM has no class for it"
        ) from None


def refuse_non_decoder(config, cls: type) -> None:
    """Encoders that transformers can run as decoders (BERT, RoBERTa, …) only do so with ``is_decoder``:
    without it the "causal LM" attends both ways and is no language model."""
    try:
        needs_flag = "is_decoder" in inspect.getsource(cls.__init__)
    except (OSError, TypeError):
        needs_flag = False
    if needs_flag and not getattr(config, "is_decoder", False):
        saved = ", ".join(getattr(config, "architectures", None) or []) or "no architecture recorded"
        raise LorashearError(f"model_type '{config.model_type}' ({saved}) is an encoder (is_decoder is false): "
                             "not a decoder language model")


def decoder_class(config) -> type:
    """``causal_lm_class`` for a config that describes a decoder LM; refused otherwise — from the config alone."""
    cls = causal_lm_class(config)
    refuse_non_decoder(config, cls)
    return cls


def model_from_config(config, *, meta: bool = False, seed: int | None = 0) -> nn.Module:
    """Build a causal LM from a config: on the meta device (structure only, no memory) or random-init."""
    cls = causal_lm_class(config)
    if meta:
        with torch.device("meta"):
            model = cls._from_config(config)
    else:
        if seed is not None:
            torch.manual_seed(seed)
        model = cls._from_config(config)
    return model.eval()


def from_pretrained_checked(cls, path: Path, *, config=None, dtype: torch.dtype | None = None) -> nn.Module:
    """``cls.from_pretrained`` that refuses a checkpoint which leaves any weight to random init (the saved
    model is another architecture or lacks the LM head)."""
    kwargs = {"config": config} if config is not None else {}
    try:
        model, info = cls.from_pretrained(path, dtype=dtype or torch.float32, output_loading_info=True, **kwargs)
    except LorashearError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise LorashearError(f"{path}: cannot load the model: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}") from None
    missing = list(info.get("missing_keys") or [])
    if missing:
        raise LorashearError(
            f"{path}: the saved weights do not cover {type(model).__name__} ({len(missing)} tensors missing, e.g. "
            f"{', '.join(sorted(missing)[:3])}); it would run with randomly initialised weights — not a causal-LM checkpoint")
    return model


# ----------------------------------------------------------------------------------------- run folders
_SAID: set[Path] = set()


def run_model_folder(path: str | Path) -> Path | None:
    """``RUN/model`` when ``path`` is a prune/recover run folder (it holds ``run.json`` and a ``model/``
    written by ``save_pruned``), else None."""
    path = Path(path)
    model = path / RUN_MODEL
    if path.is_dir() and (path / RUN_FILE).is_file() and (model / SIDECAR).is_file():
        return model
    return None


def model_folder(path: str | Path, *, say: bool = True) -> Path:
    """``path`` itself, or the model inside it when it is a run folder — said once on stderr (``say``), so
    that a user who passed ``RUN`` knows which folder was opened."""
    path = Path(path)
    inner = run_model_folder(path)
    if inner is None:
        return path
    if say and path.resolve() not in _SAID:
        _SAID.add(path.resolve())
        print(f"lorashear: {path} is a run folder; using its model {inner}", file=sys.stderr, flush=True)
    return inner


# -------------------------------------------------------------------------------------------- sidecar
def read_sidecar(model_dir: str | Path) -> dict | None:
    """The sidecar of a pruned folder (or of a run folder's model), or None for a plain folder."""
    path = model_folder(model_dir, say=False) / SIDECAR
    if not path.is_file():
        return None
    try:
        side = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise LorashearError(f"{path}: malformed sidecar JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(side, dict):
        raise LorashearError(f"{path}: not a lorashear sidecar (not a JSON object)")
    return side


def write_sidecar(model_dir: str | Path, sidecar: dict) -> Path:
    """Write the sidecar into ``model_dir`` atomically."""
    return write_json_atomic(Path(model_dir) / SIDECAR, sidecar)


def reshape_to_sidecar(model: nn.Module, sidecar: dict, model_dir: str | Path) -> nn.Module:
    """Give every parameter its saved shape and every module its recorded size attributes (in place): the
    model a pruned folder's config alone builds is the unpruned one. A stock sidecar changes nothing."""
    if sidecar.get("case") == "stock":
        return model
    shapes, module_attrs = sidecar.get("param_shapes", {}), sidecar.get("module_attrs", {})
    for name, shape in shapes.items():
        owner, _, attr = name.rpartition(".")
        try:
            mod = model.get_submodule(owner) if owner else model
        except AttributeError:
            raise LorashearError(f"{model_dir}: sidecar names parameter '{name}' that the config does not build") from None
        old = mod._parameters.get(attr)
        if old is not None and list(old.shape) != shape:
            mod._parameters[attr] = nn.Parameter(torch.empty(shape, dtype=old.dtype, device=old.device), requires_grad=old.requires_grad)
    mods = dict(model.named_modules())
    for path, attrs in module_attrs.items():
        mod = mods.get(path)
        if mod is None:
            raise LorashearError(f"{model_dir}: sidecar names module '{path}' that the config does not build")
        for attr, val in attrs.items():
            setattr(mod, attr, tuple(val) if isinstance(val, list) else val)
    return model


def skeleton(path: str | Path, config, *, meta: bool = True) -> nn.Module:
    """The model a folder (or config file) describes without its weights: on the meta device (``meta``) or
    random-init, with a pruned folder's saved shapes."""
    model = model_from_config(config, meta=meta)
    path = Path(path)
    side = read_sidecar(path) if path.is_dir() else None
    if side:
        reshape_to_sidecar(model, side, path)
    return model


# ------------------------------------------------------------------------------------------- reloading
def load_hint(model_dir: str | Path) -> str:
    """One line saying how to load a saved model folder: stock ``from_pretrained`` works when every layer kept the
    config's sizes (the sidecar's case "stock"); otherwise ``lorashear.load_pruned``. Printed at the end of every
    prune, recover and export so nobody has to find out from a size-mismatch error."""
    side = read_sidecar(model_dir)
    if side is None or side.get("case") == "stock":
        return f"load with AutoModelForCausalLM.from_pretrained('{model_dir}') (stock transformers works)"
    why = side.get("case_reason") or "its layers differ in size"
    return f"load with lorashear.load_pruned('{model_dir}') — stock from_pretrained cannot: {why}"


def load_pruned(model_dir: str | Path, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load any model written by ``save_pruned`` (or a plain HF model directory, or a run folder's model).

    The ``lorashear`` case goes through transformers' own ``from_pretrained`` too — so checkpoint layouts that
    differ from the in-memory one (transformers 5 saves MoE experts one by one and fuses them on load) are
    converted exactly as for a stock model — on a model whose parameters were first resized to the saved
    shapes and whose recorded module attributes were restored.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LorashearError(f"{model_dir}: no such model directory")
    model_dir = model_folder(model_dir)
    side = read_sidecar(model_dir)
    config = load_config(model_dir)
    cls = decoder_class(config)
    if side is None or side.get("case") == "stock":
        return from_pretrained_checked(cls, model_dir, dtype=dtype).eval()
    if not any(model_dir.glob("*.safetensors")):
        raise LorashearError(f"{model_dir}: no *.safetensors weights")

    def __init__(self, config, *args: Any, **kwargs: Any):
        cls.__init__(self, config, *args, **kwargs)
        reshape_to_sidecar(self, side, model_dir)

    resized = type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})
    model = from_pretrained_checked(resized, model_dir, config=config, dtype=dtype)
    model.__class__ = cls  # the subclass only changed construction
    return model.eval()
