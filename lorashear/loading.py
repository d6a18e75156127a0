"""Turn what a user points at (a model object, a model directory, a config file) into a causal-LM module.

This is the one loader behind every command and job (``graph``, ``analyze``, ``eval``, ``app --model``,
``prune``/``recover``): ``"demo"`` is the shipped demo model; a named real model (``"smollm2-135m"``, see
``models.py``) and a ``.gguf`` file are converted once into a cached Hugging Face folder (fp32 safetensors,
config without its quantization entry, tokenizer from the same file) and load from there; a folder written by ``save_pruned`` (it has
the ``lorashear.json`` sidecar) goes through ``load_pruned``; a PEFT adapter folder loads its base (itself
through this loader) with the adapter on top; a config file builds the model on the meta device or
random-init. A model that is not a decoder LM, or whose saved weights do not cover the causal-LM head it
would be loaded as (a ``BertModel`` folder), is refused — never run with a randomly initialised head.

Every user mistake here becomes a ``LorashearError`` that names the path and the cause, because this is
the first thing every CLI command and the app do with user input.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
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


def _refuse_non_decoder(config, cls) -> None:
    """Encoders that transformers can run as decoders (BERT, RoBERTa, …) only do so with ``is_decoder``:
    without it the "causal LM" attends both ways and is no language model."""
    import inspect

    try:
        needs_flag = "is_decoder" in inspect.getsource(cls.__init__)
    except (OSError, TypeError):
        needs_flag = False
    if needs_flag and not getattr(config, "is_decoder", False):
        saved = ", ".join(getattr(config, "architectures", None) or []) or "no architecture recorded"
        raise LorashearError(f"model_type '{config.model_type}' ({saved}) is an encoder (is_decoder is false): "
                             "not a decoder language model")


def check_causal_lm(model: nn.Module, where: str = "") -> nn.Module:
    """Refuse an in-memory Hugging Face model that is not its config's causal-LM class (e.g. a ``BertModel``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "model_type"):
        return model  # not a Hugging Face model: the caller says what it needs
    cls = _causal_lm_class(config)
    if not isinstance(base, cls):
        raise LorashearError(f"{where or type(base).__name__}: a {type(base).__name__} is not a causal LM "
                             f"(the causal-LM class for '{config.model_type}' is {cls.__name__})")
    _refuse_non_decoder(config, cls)
    return model


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


def load_model(source: Any, *, meta: bool = False, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None) -> nn.Module:
    """Return an eval-mode causal LM for ``source``.

    ``source`` may be an ``nn.Module`` (returned as is, once checked to be a causal LM), ``"demo"``, a model
    directory (plain Hugging Face, pruned by ``save_pruned``, or a PEFT adapter; weights loaded, or only the
    config when ``meta``), or a config JSON file (meta device when ``meta``, random init otherwise).
    """
    if isinstance(source, nn.Module):
        return check_causal_lm(source).eval()
    path = resolve_source(source)
    if path.is_dir() and (path / "adapter_config.json").is_file():
        model = _load_adapter(path, meta=meta, dtype=dtype)
    else:
        config = load_config(path)
        cls = _causal_lm_class(config)
        _refuse_non_decoder(config, cls)
        from .export import SIDECAR, _reshape, load_pruned, read_sidecar

        if meta or path.is_file():
            model = model_from_config(config, meta=meta)
            side = read_sidecar(path) if path.is_dir() else None
            if side and side.get("case") != "stock":  # a pruned folder's config alone describes the unpruned model
                _reshape(model, side.get("param_shapes", {}), side.get("module_attrs", {}), path)
            return model

        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise LorashearError(f"{path}: has a config but no weights (*.safetensors); use --meta for structure only")
        if (path / SIDECAR).is_file():
            model = load_pruned(path, dtype=dtype or torch.float32)
        else:
            model = from_pretrained_checked(cls, path, dtype=dtype)
    if device is not None:
        model = model.to(device)
    return model.eval()


def resolve_source(source: Any) -> Path:
    """``"demo"`` → the shipped demo model's folder; a named model (``models.NAMED``) → its cached folder
    (converted on first use); a ``.gguf`` file → its cached converted folder; anything else → an expanded path."""
    if str(source) == "demo":
        from .data import DEMO_MODEL_DIR

        return Path(DEMO_MODEL_DIR)
    from .models import NAMED, resolve_named

    if str(source) in NAMED and not Path(str(source)).exists():
        return resolve_named(str(source))
    path = Path(source).expanduser()
    if path.suffix.lower() == GGUF_SUFFIX:
        return gguf_folder(path)
    return path


# ------------------------------------------------------------------------------------------------- GGUF
GGUF_SUFFIX = ".gguf"
CACHE_MARKER = "lorashear-source.json"  # written last: a cache folder without it is incomplete


def cache_root() -> Path:
    """Where converted models live: ``$LORASHEAR_CACHE``, else ``~/.cache/lorashear``."""
    return Path(os.environ.get("LORASHEAR_CACHE") or "~/.cache/lorashear").expanduser()


def cache_complete(folder: Path) -> bool:
    return (folder / CACHE_MARKER).is_file() and (folder / "config.json").is_file()


def gguf_folder(path: Path) -> Path:
    """The cached Hugging Face folder for the GGUF file ``path``, converted on first use. The cache key is the
    file's absolute path, size and modification time: a changed file is converted again."""
    if not path.is_file():
        raise LorashearError(f"{path}: no such GGUF file")
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_root() / "gguf" / f"{path.stem}-{key}"
    if not cache_complete(folder):
        convert_gguf(path, folder)
    return folder


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file (metadata only)."""
    from gguf import GGUFReader

    try:
        field = GGUFReader(path).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except (KeyError, IndexError, ValueError, OSError) as exc:
        raise LorashearError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None


def convert_gguf(path: Path, out: Path, *, source: str | None = None, install_hint: str = "pip install gguf") -> Path:
    """De-quantize the GGUF file ``path`` (transformers' GGUF reader) into a plain fp32 Hugging Face folder
    ``out``: safetensors + config (its ``quantization_config`` dropped, so ``compress`` and ``save_pruned``
    treat it as any model) + the tokenizer the file carries. Written to a temporary folder and renamed, the
    marker last, so an interrupted conversion is redone rather than half-used."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise LorashearError(f"{path}: reading GGUF files needs the 'gguf' package: {install_hint}") from None
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    t0 = time.perf_counter()
    arch = gguf_architecture(path)
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except (ValueError, KeyError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "not supported" in msg or isinstance(exc, KeyError):
            from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

            raise LorashearError(
                f"{path}: GGUF architecture '{arch}' cannot be loaded by transformers {transformers.__version__} "
                f"(it reads: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))})") from None
        raise LorashearError(f"{path}: cannot read the GGUF metadata: {msg[:300]}") from None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    cls = _causal_lm_class(config)
    _refuse_non_decoder(config, cls)
    try:
        loaded = cls.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LorashearError(f"{path}: transformers cannot load this GGUF '{arch}' model: {msg[:300]}") from None
    state = loaded.state_dict()
    del loaded
    # rebuilt from the config without the quantization entry: transformers refuses to save a "quantized" model
    model = cls._from_config(config, dtype=torch.float32)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise LorashearError(f"{path}: the GGUF tensors do not fill {cls.__name__}: {str(exc).splitlines()[0][:300]}") from None
    del state
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.eval().save_pretrained(tmp)
    tok_error = None
    try:
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(tmp)
    except Exception as exc:  # noqa: BLE001 — a GGUF without a readable tokenizer still traces; say why in the marker
        tok_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    st = path.stat()
    marker = {"format": 1, "source": source or str(path.resolve()), "gguf": str(path.resolve()), "size": st.st_size,
              "architecture": arch, "model_type": config.model_type, "dtype": "float32",
              "transformers": transformers.__version__, "convert_s": round(time.perf_counter() - t0, 2),
              "tokenizer_error": tok_error}
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    (out / CACHE_MARKER).write_text(json.dumps(marker, indent=1))
    return out


def load_model_and_tokenizer(source: Any, *, device: str | torch.device | None = None,
                             dtype: torch.dtype | None = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from a model folder (or ``"demo"``, a named model, a ``.gguf`` file): the model
    through ``load_model``, the tokenizer from the folder (an adapter folder without one: its base model's)."""
    from transformers import AutoTokenizer

    path = resolve_source(source)
    if not path.is_dir():
        raise LorashearError(f"model folder not found: {path}")
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise LorashearError(f"{path} is not a Hugging Face model folder (no config.json)")
    model = load_model(path, dtype=dtype, device=device)
    tok_dir = path
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        tok_dir = Path(getattr(base, "name_or_path", "") or path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise LorashearError(f"cannot load the tokenizer in {tok_dir}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return model, tokenizer


def _load_adapter(path: Path, *, meta: bool, dtype: torch.dtype | None) -> nn.Module:
    """A PEFT adapter directory: its base model (a local path, loaded through ``load_model``) with the adapter on top."""
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
    base = load_model(base_path.resolve(), dtype=dtype)
    try:
        return PeftModel.from_pretrained(base, path).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise LorashearError(f"{path}: cannot load the adapter onto {base_path}: {str(exc).strip().splitlines()[0][:300]}") from None
