"""Prune: plan (target ratio, group kinds, allocation, layer range, knowledge report with γ) with a live preview of
which units go and what each layer keeps; then run it — a Prune job with any method, an Export of exactly this plan
without training, or a Recover job on a pruned result — and watch it in the Jobs tab.

The preview is the library's planner (``viz.plan_preview`` → ``lorashear.prune.preview.plan_model``), the same
``make_plan`` the Prune job ends with, on the same settings (method defaults resolved the same way). It is the run's
plan only for ``magnitude`` without a knowledge report (same scores); the other methods rank units by what only the
run computes (LoRA saliency after warm-up, Taylor scores, fluctuation, random draws), so the page says next to the
numbers which parts are exact and which an estimate (``plan_preview.fidelity``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from dash import Input, Output, State, ctx, dcc, html, no_update

from lorashear.errors import LorashearError
from lorashear.prune.settings import PlanSettings
from lorashear.settings import SettingsError, options

from .. import plan_preview as PP
from ..components import LEGEND_MARGIN_R, LEGEND_RIGHT, card, kv_table, plot_template
from ..session import AppState

PLAN_FIELDS = ("ratio", "kinds", "allocation", "layers", "align", "knowledge", "gamma")
RUN_FIELDS = ("method", "steps", "batch_size", "seq_len", "eval_tokens", "device")
RECOVER_FIELDS = ("pruned", "tokens", "round_steps", "instruct_steps", "eval_tokens")
CHANNEL_BINS = 32

# the form starts at the schema's defaults (the run's when a field is left as it is)
_DEFAULTS = {name: default for name, (_, default) in options(PlanSettings).items()}
_MAP_COLOURS = [[0.0, "#dfe6ee"], [0.5, "#dfe6ee"], [0.5, "#c0392b"], [1.0, "#c0392b"]]


# ------------------------------------------------------------------------------------------ layout
def _field(label: str, control: Any, err_id: str, help: str = "") -> html.Div:
    """A labelled control with its one-line error line under it (``err_id``: plan-err-*, run-err-*, rec-err-*)."""
    return html.Div([html.Label(label), control, html.Div(help, className="help") if help else None,
                     html.Div(id=err_id, className="field-error")], className="field")


def knowledge_options(state: AppState, mv: Any) -> list[dict]:
    """Knowledge reports (succeeded Analyze jobs) of this model — matched by the identity the report stores,
    not by path: their scores pick the units, γ protects."""
    from .knowledge import reports_of

    if mv is None:
        return []
    return [{"label": f"job {j.id} · {j.params.get('estimator')}", "value": j.artifacts["report"]}
            for j in reports_of(state, mv)[0]]


def pruned_options(state: AppState) -> list[dict]:
    """Pruned model folders to recover: succeeded Prune and Export jobs."""
    out = []
    for kind in ("prune", "export"):
        for j in state.registry.list(kind=kind, status="succeeded"):
            if "model" in j.artifacts and Path(j.artifacts["model"]).is_dir():
                out.append({"label": f"{kind} job {j.id} · {Path(j.params.get('model', '')).name}",
                            "value": j.artifacts["model"]})
    return out


def layout(state: AppState, mv: Any) -> html.Div:
    hidden = {"display": "none"}
    if mv is None:
        return html.Div([html.P("No model loaded.", className="muted"), html.Button(id="plan-select", style=hidden),
                         dcc.Store(id="plan-store")], id="prune-view")
    from lorashear.prune.names import METHODS

    plan_controls = [
        _field("Target: fraction of parameters to remove",
               html.Div([
                   # the slider's own number box commits on blur only (Enter did nothing visible for > 60 s):
                   # ours commits on Enter or blur (debounce) and the two stay in step (``sync_ratio``)
                   dcc.Slider(id="plan-ratio", min=0.05, max=0.9, step=0.01, value=0.2, updatemode="mouseup",
                              marks={v: f"{v:.0%}" for v in (0.1, 0.3, 0.5, 0.7, 0.9)},
                              allow_direct_input=False, className="ratio-slider"),
                   html.Span([dcc.Input(id="plan-ratio-text", type="number", value=20, min=1, max=99, step=1,
                                        debounce=True, className="text ratio-box"), " %"], className="ratio-entry"),
               ], className="ratio-row"), "plan-err-ratio"),
        _field("Group kinds", dcc.Checklist(id="plan-kinds", options=list(PP.KINDS), value=list(_DEFAULTS["kinds"]),
                                            inline=True, className="check"), "plan-err-kinds"),
        _field("Allocation", dcc.RadioItems(id="plan-allocation", value="method", inline=True, className="check",
                                            options=[{"label": "the method's", "value": "method"}, "global", "uniform"]),
               "plan-err-allocation",
               "global: least important per parameter first, across layers; uniform: the same fraction per layer; "
               "the method's: uniform for llm-pruner and LoRAPrune, else global (as the run resolves it)"),
        _field("Layer range", dcc.Input(id="plan-layers", type="text", placeholder="START:STOP (blank: all)",
                                        debounce=True, className="text"), "plan-err-layers"),
        _field("Align widths to a multiple of", dcc.Input(id="plan-align", type="text", placeholder="blank: none",
                                                           debounce=True, className="text"), "plan-err-align"),
        _field("Knowledge report (scores; γ protects its top)",
               dcc.Dropdown(id="plan-knowledge", options=knowledge_options(state, mv), value=None,
                            placeholder="none: " + ("index order (structure only)" if mv.meta else "weight magnitude")),
               "plan-err-knowledge"),
        _field("γ: protect the top fraction of node groups", dcc.Input(id="plan-gamma", type="text", debounce=True,
                                                                      placeholder="blank: none", className="text"),
               "plan-err-gamma"),
    ]
    num = dict(type="text", debounce=False, className="text")
    run_controls = [
        _field("Method", dcc.Dropdown(id="run-method", options=list(METHODS), value=_DEFAULTS["method"], clearable=False),
               "run-err-method", "llm-pruner (the default: lowest on SmolLM2-135M's training sources, tied with lhspg held out), "
               "lhspg (LoRAShear's own), "
               "or another baseline on the same groups and budget"),
        _field("Optimizer steps", dcc.Input(id="run-steps", value="200", **num), "run-err-steps"),
        _field("Batch size", dcc.Input(id="run-batch_size", value="4", **num), "run-err-batch_size"),
        _field("Tokens per sequence", dcc.Input(id="run-seq_len", value="128", **num), "run-err-seq_len"),
        _field("Evaluation tokens per source", dcc.Input(id="run-eval_tokens", value="16384", **num), "run-err-eval_tokens"),
        _field("Device", dcc.Dropdown(id="run-device", options=["auto", "cpu", "cuda"], value="auto",
                                      clearable=False), "run-err-device"),
    ]
    recover_controls = [
        _field("Pruned model", dcc.Dropdown(id="rec-pruned", options=pruned_options(state), value=None,
                                            placeholder="a succeeded Prune or Export job"), "rec-err-pruned"),
        _field("Stage-1 token budget", dcc.Input(id="rec-tokens", value="102400", **num), "rec-err-tokens"),
        _field("Steps per round", dcc.Input(id="rec-round_steps", value="25", **num), "rec-err-round_steps"),
        _field("Instruction steps", dcc.Input(id="rec-instruct_steps", value="100", **num), "rec-err-instruct_steps"),
        _field("Evaluation tokens per source", dcc.Input(id="rec-eval_tokens", value="16384", **num), "rec-err-eval_tokens"),
    ]
    graph = dict(config={"displaylogo": False})
    weights_note = None if not mv.meta else html.P(
        "This model is structure only (meta): plans can be previewed and saved, not run.", className="muted")
    return html.Div([
        html.Div([
            card("Plan", *plan_controls, html.Div(id="plan-msg", className="msg"), className="narrow"),
            card("What this plan removes",
                 html.Div(id="plan-summary"),
                 html.Div([html.Button("Save plan", id="plan-save", className="btn"),
                           html.Button("Select planned groups", id="plan-select", className="btn",
                                       title="shared selection: the Groups grid and the Graph light them up"),
                           html.Button("Export this plan (no training)", id="plan-export", className="btn",
                                       disabled=bool(mv.meta)),
                           dcc.Dropdown(id="plan-export-format", clearable=False, value="hf", searchable=False,
                                        options=[{"label": "as a Hugging Face folder", "value": "hf"},
                                                 {"label": "as a GGUF file (llama.cpp, f16)", "value": "gguf"}],
                                        style={"minWidth": "16em"}),
                           html.Span(id="plan-action-msg", className="msg")], className="toolbar"),
                 dcc.Graph(id="plan-layers-fig", **graph), className="wide"),
        ], className="row"),
        html.Div([card("Layer × attention head: planned removal", dcc.Graph(id="plan-heads-fig", **graph),
                       className="half"),
                  card("Layer × MLP channel bin: planned removal", dcc.Graph(id="plan-channels-fig", **graph),
                       className="half")], className="row"),
        html.Div([
            card("Prune with this plan", weights_note, *run_controls,
                 html.Button("Prune", id="run-prune", className="btn primary", disabled=bool(mv.meta)),
                 html.Div(id="run-msg", className="msg"), className="half"),
            card("Recover a pruned model", *recover_controls,
                 html.Button("Recover", id="run-recover", className="btn primary"),
                 html.Div(id="rec-msg", className="msg"), className="half"),
        ], className="row"),
        dcc.Store(id="plan-store"),
        dcc.Store(id="plan-saved"),
    ], id="prune-view")


# ------------------------------------------------------------------------------------------ figures
def layers_figure(rows: list[dict]) -> go.Figure:
    """Parameters per layer before and after the plan, side by side (grouped, same axis)."""
    xs = [f"L{r['layer']}" if isinstance(r["layer"], int) else r["layer"] for r in rows]
    fig = go.Figure()
    fig.add_bar(name="before", x=xs, y=[r["before"] for r in rows], marker_color="#9fb3cc",
                hovertemplate="%{x}: %{y:,} params before<extra></extra>")
    fig.add_bar(name="after the plan", x=xs, y=[r["after"] for r in rows], marker_color="#4a6fa5",
                customdata=[r["removed"] for r in rows],
                hovertemplate="%{x}: %{y:,} params after (%{customdata:,} removed)<extra></extra>")
    fig.update_layout(barmode="group", height=300, margin=dict(l=60, r=LEGEND_MARGIN_R, t=30, b=40),
                      template=plot_template(), yaxis_title="parameters", legend=LEGEND_RIGHT)
    return fig


def map_figure(layers: list[int], z: np.ndarray, protected: np.ndarray, what: str, bins: int | None = None) -> go.Figure:
    """Layer × unit map: red = the plan removes it, grey = kept; protected (γ) units outlined. With ``bins``, the
    channels are summed in equal bins and the colour is the fraction of the bin removed."""
    fig = go.Figure()
    if not layers or z.size == 0:
        fig.add_annotation(text=f"no {what} groups", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_layout(height=260, xaxis_visible=False, yaxis_visible=False, template=plot_template())
        return fig
    x = list(range(z.shape[1]))
    colours, zmax, label = _MAP_COLOURS, 1.0, "removed"
    if bins and z.shape[1] > bins:
        size = -(-z.shape[1] // bins)
        nb = -(-z.shape[1] // size)
        zz = np.full((z.shape[0], nb), np.nan)
        pp = np.zeros((z.shape[0], nb), dtype=bool)
        for b in range(nb):
            zz[:, b] = np.nanmean(z[:, b * size:(b + 1) * size], axis=1)
            pp[:, b] = protected[:, b * size:(b + 1) * size].mean(axis=1) >= 0.5
        z, protected, x = zz, pp, [b * size for b in range(nb)]
        colours, label = [[0, "#dfe6ee"], [1, "#c0392b"]], f"fraction removed ({size} channels per bin)"
    fig.add_heatmap(z=z, x=x, y=layers, colorscale=colours, zmin=0, zmax=zmax, showscale=bool(bins),
                    colorbar=dict(title=""), xgap=1, ygap=1,
                    hovertemplate="layer %{y}, unit %{x}: " + ("%{z:.0%} removed" if bins else
                                                               "%{z} (1 = removed)") + "<extra></extra>")
    ys, xs = np.nonzero(protected)
    if len(xs):
        fig.add_scatter(x=[x[j] for j in xs], y=[layers[i] for i in ys], mode="markers", name="protected (γ)",
                        marker=dict(symbol="square-open", size=12, color="black", line=dict(width=2)),
                        hoverinfo="skip")
    fig.update_layout(height=max(220, 26 * len(layers) + 90), margin=dict(l=50, r=10, t=10, b=40),
                      template=plot_template(), xaxis_title=label if bins else f"{what} unit",
                      yaxis=dict(title="layer", autorange="reversed", dtick=1), showlegend=bool(len(xs)),
                      xaxis=dict(dtick=None if bins else 1))
    return fig


def summary(data: dict) -> html.Div:
    p = data["plan"]
    by_kind: dict[str, tuple[int, int]] = {}
    for info in p["groups"].values():
        r, n = by_kind.get(info["kind"], (0, 0))
        by_kind[info["kind"]] = (r + info["removed"], n + info["n_units"])
    rows = [("parameters", html.Span(f"{p['params_total']:,} → {p['params_after']:,}", id="plan-params")),
            ("removed", html.Span(f"{p['params_removed']:,} ({p['ratio_achieved']:.2%}; target "
                                  f"{p['ratio_target']:.0%} = {p['params_target']:,})", id="plan-removed")),
            *[(f"{k} units removed", f"{r:,} of {n:,}") for k, (r, n) in sorted(by_kind.items())],
            ("groups touched", f"{len(p['removal'])} of {len(p['groups'])} candidate groups"),
            ("units chosen by", p["scores_from"])]
    body = [[r["layer"], f"{r['before']:,}", f"{r['removed']:,}", f"{r['after']:,}",
             f"{r['heads'][0]}/{r['heads'][1]}" if r["heads"] else "—",
             f"{r['channels'][0]}/{r['channels'][1]}" if r["channels"] else "—"] for r in data["layers"]]
    # one Markdown component, not ~250 html ones: on a 32-layer model the Dash renderer's per-component cost of the
    # table was a large share of the time a slider move takes to show
    md = "\n".join(["| layer | before | removed | after | heads kept | channels kept |", "|---|---:|---:|---:|---:|---:|",
                    *("| " + " | ".join(map(str, r)) + " |" for r in body)])
    return html.Div([kv_table(rows), fidelity_table(data),
                     html.Details([html.Summary("Per layer"), dcc.Markdown(md, className="md-data")])])


def fidelity_table(data: dict) -> html.Div:
    """Next to the numbers: which of them the run reproduces exactly and which are an estimate (``PP.fidelity``)."""
    method = (data.get("inputs") or {}).get("method") or _DEFAULTS["method"]
    rows = PP.fidelity(data)
    exact = all(status == "exact" for _, status, _ in rows)
    name = {"lhspg": "LHSPG", "loraprune": "LoRAPrune", "llm-pruner": "LLM-Pruner", "flap": "FLAP"}.get(method, method)
    head = (f"Preview vs a {name} run: this is the run's plan." if exact else
            f"Preview vs a {name} run: the parts marked estimate can differ.")
    return html.Div([html.P(head, className="fidelity-head"),
                     html.Table([html.Tr([html.Th(part), html.Td(html.Span(status, className=f"badge {status}")),
                                          html.Td(why, className="muted")]) for part, status, why in rows],
                                className="kv fidelity")], id="plan-fidelity")


# ------------------------------------------------------------------------------------------ compute
def compute(state: AppState, mv: Any, values: dict[str, Any]) -> tuple[dict | None, dict[str, str], str]:
    """Plan form values (and the run's method) -> (preview data or None, {field: message}, general message). The
    callback's logic, testable without a browser. Field errors come from the settings schema and from the planner
    (``SettingsError`` names the field); nothing is matched on message text."""
    values = {**values, "allocation": None if values.get("allocation") in (None, "", "method") else values["allocation"]}
    settings, errors = PP.parse_inputs({k: v for k, v in values.items() if k in PLAN_FIELDS + ("method",)})
    if settings is None:
        return None, errors, ""
    try:
        return PP.preview(mv, settings), {}, ""
    except SettingsError as exc:
        return None, exc.errors, ""
    except LorashearError as exc:
        return None, {}, str(exc).splitlines()[0]


def figures(mv: Any, data: dict) -> tuple[go.Figure, go.Figure, go.Figure]:
    heads = map_figure(*PP.unit_maps(mv, data["plan"], "attention"), "head")
    channels = map_figure(*PP.unit_maps(mv, data["plan"], "mlp"), "channel", bins=CHANNEL_BINS)
    return layers_figure(data["layers"]), heads, channels


def save_plan(state: AppState, data: dict) -> Path:
    """Write the previewed plan as ``runs/plans/plan-<model job>-<time>.json`` (the format ``lorashear plan``
    writes; an Export job or ``lorashear`` commands read it)."""
    from lorashear.prune.plan import plan_from_dict

    out = state.runs_dir / "plans" / f"plan-{data['model_job']}-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6}.json"
    return plan_from_dict(data["plan"]).save(out)


def prune_params(mv: Any, data: dict, run: dict[str, Any]) -> dict[str, Any]:
    """The Prune job's parameters: the plan's settings exactly as the preview resolved them (method defaults
    included, so the run cannot plan with other values), plus the run settings."""
    plan = {k: v for k, v in data["inputs"].items() if v is not None and k != "method"}
    return {"model": mv.source, **plan, **{k: v for k, v in run.items() if v not in (None, "")}}


def export_format(fmt: str | None) -> dict[str, str]:
    """The export job's format fields for the Prune tab's choice: a Hugging Face folder, or a GGUF file in f16 (the
    size llama.cpp users start from; the Jobs form offers every dtype)."""
    return {"format": "gguf", "dtype": "f16"} if fmt == "gguf" else {"format": "hf"}


def _submit(state: AppState, kind: str, params: dict, fields: tuple[str, ...]) -> tuple[Any, list[str], int | None]:
    from lorashear.jobs import JobParamError, submit

    try:
        job = submit(state.registry, kind, params, state.runs_dir, kinds=state.kinds, env=state.worker_env)
    except JobParamError as exc:
        errs = [exc.errors.get(f, "") for f in fields]
        extra = "; ".join(f"{k}: {v}" for k, v in exc.errors.items() if k not in fields)
        return html.Span("Fix the marked fields." + (f" {extra}" if extra else ""), className="error"), errs, None
    except LorashearError as exc:
        return html.Span(str(exc), className="error"), [""] * len(fields), None
    return html.Span([f"Started job {job.id} ({kind}). ", "Its curves and log are in the Jobs tab."],
                     className="ok"), [""] * len(fields), job.id


def sync_ratio(trigger: Any, slider: float | None, percent: float | None) -> tuple[Any, Any]:
    """(slider value, box value) after one of them changed: the box (percent, committed on Enter or blur) moves
    the slider — which re-plans — and the slider writes its value into the box. A blank box changes nothing."""
    if trigger == "plan-ratio-text":
        if percent is None:
            return no_update, no_update
        ratio = round(float(percent) / 100, 4)
        return (ratio if ratio != slider else no_update), no_update
    if slider is None:
        return no_update, no_update
    pct = round(float(slider) * 100, 2)
    return no_update, (no_update if percent is not None and abs(float(percent) - pct) < 1e-9 else pct)


# ------------------------------------------------------------------------------------------ callbacks
def register(app, state: AppState, get_model) -> None:
    err_outputs = [Output(f"plan-err-{f}", "children") for f in PLAN_FIELDS]

    @app.callback(
        Output("plan-store", "data"), Output("plan-summary", "children"), Output("plan-layers-fig", "figure"),
        Output("plan-heads-fig", "figure"), Output("plan-channels-fig", "figure"), Output("plan-msg", "children"),
        *err_outputs,
        *[Input(f"plan-{f}", "value") for f in PLAN_FIELDS], Input("run-method", "value"), Input("model-key", "data"),
        Input("tabs", "value"), State("plan-store", "data"),
    )
    def update(ratio, kinds, allocation, layers, align, knowledge, gamma, method, model_key, tab, current):
        # only on the Prune tab: the first preview of a model builds its model object (seconds on a 7B config),
        # which must not hold up the page load or the other tabs
        skip = (no_update,) * (6 + len(PLAN_FIELDS))
        if tab != "prune" or (ctx.triggered_id == "tabs" and current and current.get("model_job") == model_key):
            return skip
        mv = get_model(model_key)
        if mv is None:
            return skip
        values = dict(zip(PLAN_FIELDS, (ratio, kinds, allocation, layers, align, knowledge, gamma)), method=method)
        data, errors, msg = compute(state, mv, values)
        errs = [errors.get(f, "") for f in PLAN_FIELDS]
        if data is None:
            return (None, html.P("No plan: fix the marked field.", className="muted"), no_update, no_update, no_update,
                    html.Span(msg, className="error") if msg else "", *errs)
        return (data, summary(data), *figures(mv, data), "", *errs)

    @app.callback(Output("plan-ratio", "value"), Output("plan-ratio-text", "value"),
                  Input("plan-ratio", "value"), Input("plan-ratio-text", "value"), prevent_initial_call=True)
    def ratio_sync(slider, text):
        return sync_ratio(ctx.triggered_id, slider, text)

    @app.callback(Output("groups-grid", "rowTransaction"), Input("plan-store", "data"), State("groups-grid", "rowData"),
                  prevent_initial_call=True)
    def mark_grid(data, rows):
        """Mark the planned groups in the Groups grid (a transaction: the user's selection and sort stay)."""
        from .groups import planned_rows

        if not rows:
            return no_update
        return {"update": planned_rows(rows, (data or {}).get("plan"))}

    @app.callback(
        Output("plan-action-msg", "children"), Output("plan-saved", "data"),
        Output("job-sel", "data", allow_duplicate=True), Output("tabs", "value", allow_duplicate=True),
        Input("plan-save", "n_clicks"), Input("plan-export", "n_clicks"), State("plan-store", "data"),
        State("model-key", "data"), State("plan-export-format", "value"), prevent_initial_call=True,
    )
    def act(_s, _e, data, model_key, fmt):
        mv = get_model(model_key)
        if not data or mv is None:
            return html.Span("No plan to save: fix the plan first.", className="error"), no_update, no_update, no_update
        path = save_plan(state, data)
        if ctx.triggered_id == "plan-save":
            return html.Span(f"Saved {path}", className="ok", id="plan-saved-path"), str(path), no_update, no_update
        params = {"model": mv.source, "plan": str(path), **export_format(fmt)}
        msg, _errs, job_id = _submit(state, "export", params, ())
        return msg, str(path), *((job_id, "jobs") if job_id is not None else (no_update, no_update))

    run_inputs = [State(f"run-{f}", "value") for f in RUN_FIELDS]

    @app.callback(
        Output("run-msg", "children"), *[Output(f"run-err-{f}", "children") for f in RUN_FIELDS],
        Output("job-sel", "data", allow_duplicate=True), Output("tabs", "value", allow_duplicate=True),
        Input("run-prune", "n_clicks"), State("plan-store", "data"), State("model-key", "data"), *run_inputs,
        prevent_initial_call=True,
    )
    def prune(_n, data, model_key, *run_values):
        mv = get_model(model_key)
        if not data or mv is None:
            return (html.Span("No plan: fix the plan first.", className="error"), *[""] * len(RUN_FIELDS), no_update,
                    no_update)
        params = prune_params(mv, data, dict(zip(RUN_FIELDS, run_values)))
        msg, errs, job_id = _submit(state, "prune", params, RUN_FIELDS)
        return (msg, *errs, *((job_id, "jobs") if job_id is not None else (no_update, no_update)))

    @app.callback(
        Output("rec-msg", "children"), *[Output(f"rec-err-{f}", "children") for f in RECOVER_FIELDS],
        Output("job-sel", "data", allow_duplicate=True), Output("tabs", "value", allow_duplicate=True),
        Input("run-recover", "n_clicks"), *[State(f"rec-{f}", "value") for f in RECOVER_FIELDS],
        prevent_initial_call=True,
    )
    def recover(_n, *values):
        params = {k: v for k, v in zip(RECOVER_FIELDS, values) if v not in (None, "")}
        msg, errs, job_id = _submit(state, "recover", params, RECOVER_FIELDS)
        return (msg, *errs, *((job_id, "jobs") if job_id is not None else (no_update, no_update)))

    @app.callback(Output("rec-pruned", "options"), Output("plan-knowledge", "options"), Input("tabs", "value"),
                  State("model-key", "data"), prevent_initial_call=True)
    def refresh(tab, model_key):
        if tab != "prune":
            return no_update, no_update
        mv = get_model(model_key)
        return pruned_options(state), knowledge_options(state, mv)
