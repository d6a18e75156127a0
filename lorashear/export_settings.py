"""The one spelling of an export request (``lorashear export``, the ``export`` job kind and the app's Export
buttons): which units to remove first (none, a hand selection or a saved plan), the output format and dtype.
The CLI flags and the job form are generated from it (``lorashear.settings``). Torch-free (the CLI's ``--help``)."""
from __future__ import annotations

import json
from dataclasses import dataclass

from .settings import check, option, to_params

FORMATS = ("hf", "gguf")
DTYPES = ("f32", "f16", "q8_0", "q4_0")


def parse_units(text: str) -> dict[str, list[int]]:
    """``{"group id": [unit, ...]}`` from JSON text; ValueError with a one-line, user-facing message."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError('must be a JSON object of group id -> unit indices, e.g. {"model.layers.0.mlp:channels": [0, 5]}')
    out: dict[str, list[int]] = {}
    for gid, units in raw.items():
        if not isinstance(units, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in units):
            raise ValueError(f"units of '{gid}' must be a list of whole numbers")
        if any(u < 0 for u in units):
            raise ValueError(f"units of '{gid}' must be ≥ 0")
        if units:
            out[str(gid)] = sorted(set(units))
    if not out:
        raise ValueError("no unit selected")
    return out


@dataclass
class ExportSettings:
    """What an export writes."""

    format: str = option("hf", "hf: a Hugging Face folder (save_pruned, reload verified); gguf: one file llama.cpp runs",
                         type="choice", choices=FORMATS, label="Format")
    dtype: str = option("f32", "weights: f32 or f16 (hf, gguf); q8_0 or q4_0 (gguf, the gguf package's quantizers)",
                        type="choice", choices=DTYPES, label="Weights")
    units: str | None = option(None, 'remove these units first: JSON {"group id": [unit, ...]}, e.g. '
                               '{"model.layers.0.self_attn:heads": [1]} (the Groups tab fills it)',
                               label="Units to remove (JSON)", metavar="JSON")
    plan: str | None = option(None, "…or remove a saved plan's units first (plan.json of lorashear plan or the app)",
                              type="file", label="…or a plan file", metavar="PLAN")
    verify: bool = option(True, "skip the masked-vs-compressed and reload checks", type="bool", flag="--no-verify",
                          label="Verify (masked vs compressed logits, and the reload)")
    force: bool = option(False, "replace an existing output", type="bool", label="Replace an existing output")
    measure: bool = option(False, "gguf: then run the file in llama.cpp and record its prompt and generation tokens/s "
                           "(median of 3) in the result and in <file>.llama_cpp.json; needs "
                           "llama-cpp-python", type="bool", label="Measure tokens/s in llama.cpp (gguf)")
    measure_threads: int = option(2, "CPU threads llama.cpp measures with (--measure); more threads than free cores "
                                  "make its timings erratic", type="int", min=1, label="llama.cpp threads")

    def __post_init__(self) -> None:
        check(self, _cross)

    def to_dict(self) -> dict:
        return to_params(self)


def _cross(st: ExportSettings) -> dict[str, str]:
    errors = {}
    if st.units and st.plan:
        errors["units"] = "give the units (JSON) or a plan file, not both"
    elif st.units:
        try:
            parse_units(st.units)
        except ValueError as exc:
            errors["units"] = str(exc)
    if st.measure and st.format != "gguf":
        errors["measure"] = "llama.cpp runs GGUF files: measuring needs format gguf"
    if st.format == "hf" and st.dtype not in ("f32", "f16"):
        errors["dtype"] = f"{st.dtype} is a GGUF quantization; a Hugging Face folder takes f32 or f16"
    return errors
