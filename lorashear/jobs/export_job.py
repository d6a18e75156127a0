"""The "export" job: ``lorashear.deploy.export`` in a worker — the same call and settings schema as
``lorashear export`` and the app's Export buttons. With a hand selection of units (``{"group id": [unit, ...]}``,
what the app's Groups grid sends) or a saved plan, those units are removed first (``compress`` verifies masked vs
compressed logits, ``save_pruned`` the reload); the output is a Hugging Face folder or a GGUF file — with
``measure``, run in llama.cpp too (its figures in the result and in the ``llama_cpp`` artifact, a JSON file beside
the GGUF file that the Compare view reads)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .worker import JobContext


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from lorashear.deploy import export

    from .kinds import EXPORT

    st = EXPORT.make_settings(params)
    out = Path(ctx.out_dir) / ("model.gguf" if st.format == "gguf" else "model")
    info = export(params["model"], out, st, progress=ctx.progress)
    if info.get("selection"):
        ctx.log(f"removed {info['units_removed']} units of {info['groups']} groups ({info['selection']}): parameters "
                f"{info['params_before']:,} -> {info['params_after']:,}")
    ctx.log(f"wrote {out} ({st.format}, {st.dtype}); load or run with {info.get('hint')}")
    for note in info.get("notes") or []:
        ctx.log(f"note: {note}")
    result = {k: info[k] for k in ("format", "dtype", "params_before", "params_after", "units_removed", "groups",
                                   "case", "max_diff", "architecture") if info.get(k) is not None}
    result["params_removed"] = info["params_before"] - info["params_after"] if "params_before" in info else 0
    result["load"] = info.get("hint")
    # a GGUF file is not a model folder the app can browse, recover or compare: its own artifact name
    artifacts = {"gguf" if st.format == "gguf" else "model": out}
    if info.get("llama_cpp"):  # --measure: llama.cpp's own figures, for the Compare view
        figs = info["llama_cpp"]
        ctx.log(f"llama.cpp: prompt {figs['prompt_tokens_per_s']:,.1f} tok/s, generation {figs['gen_tokens_per_s']:,.1f} "
                f"tok/s ({figs['threads']} threads, median of {figs['reps']})")
        result["llama_cpp"] = {k: figs[k] for k in ("prompt_tokens_per_s", "gen_tokens_per_s", "threads", "reps",
                                                    "llama_cpp_python", "load_avg_after")}
        artifacts["llama_cpp"] = info["llama_cpp_json"]
    return {"artifacts": artifacts, "result": result}
