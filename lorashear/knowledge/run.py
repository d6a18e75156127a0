"""One knowledge analysis from a model folder to a saved report: the one call behind ``lorashear analyze`` and the
``analyze`` job (load the model, draw calibration windows, run the estimator, optionally mark the top γ, save)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..settings import SettingsError
from .settings import AnalyzeSettings

Progress = Callable[[float, str], None]


def analyze_model(model: str | Path, out: str | Path, settings: AnalyzeSettings | None = None, *,
                  progress: Progress | None = None, **overrides: Any):
    """Analyze ``model`` (a folder, ``demo``, a .gguf file or a named model) and save the report to ``out``
    (.parquet, or .json); returns the ``KnowledgeReport`` (its ``path`` attribute is where it was written)."""
    from ..data import DEMO_MODEL_DIR
    from ..loading import load_model, preflight
    from .analysis import analyze
    from .calibration import calibration_data

    st = replace(settings, **overrides) if settings is not None else AnalyzeSettings(**overrides)
    errors = preflight({"model": str(model), "data": st.data if st.estimator != "magnitude" else (),
                        "seq_len": st.seq_len})
    if errors:  # before anything is loaded: paths, configs and data specs alone
        raise SettingsError(errors)
    progress = progress or (lambda f, s: None)
    progress(0.02, "loading the model")
    net, tokenizer = load_model(model, device=st.device)
    source = str(DEMO_MODEL_DIR) if str(model) == "demo" else str(model)
    samples, data = None, None
    if st.estimator != "magnitude":
        progress(0.08, "drawing calibration windows")
        samples, data = calibration_data(tokenizer, list(st.data), n_samples=st.samples, seq_len=st.seq_len,
                                         seed=st.seed, model=net, field=st.field)

    def step(done: int, total: int) -> None:
        progress(0.1 + 0.85 * done / max(total, 1), f"{st.estimator}: {done}/{total}")

    report = analyze(net, samples, estimator=st.estimator, source=source, data=data, gamma=st.gamma,
                     select_level=st.select, select_scope=st.scope, select_by=st.by, progress=step,
                     **st.estimator_options())
    progress(0.97, "saving the report")
    report.path = report.save(out)
    progress(1.0, "done")
    return report
