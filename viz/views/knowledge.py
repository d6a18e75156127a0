"""Knowledge distribution: layer × head and layer × channel-bin heatmaps, per-layer bars and the score
distribution of a knowledge report written by an Analyze job (``lorashear.knowledge``).

Only measured reports are drawn: the report picker lists succeeded Analyze jobs; with none, the view says
"not available yet — run an analysis". Clicking a heatmap cell selects that layer's group (shared selection:
the graph and the groups table follow). The figures are ``viz.knowledge_figures`` (shared with
``lorashear analyze --figures``).
"""
from __future__ import annotations

import importlib
import importlib.util
from collections import OrderedDict
from pathlib import Path

import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html, no_update

from ..components import card, unavailable
from ..session import AppState

_REPORTS: "OrderedDict[str, object]" = OrderedDict()


def _missing() -> str | None:
    """Why reports cannot be shown, or None."""
    if importlib.util.find_spec("lorashear.knowledge") is None:
        return "run an analysis — the knowledge analysis (lorashear.knowledge) has not landed in the library yet."
    if importlib.util.find_spec("viz.knowledge_figures") is None:
        return "run an analysis — the knowledge figures (viz.knowledge_figures) have not landed yet."
    return None


def report_jobs(state: AppState) -> list:
    return [j for j in state.registry.list(kind="analyze", status="succeeded") if "report" in j.artifacts
            and Path(j.artifacts["report"]).is_file()]


def load(path: str):
    """A knowledge report (cached by path; reports are written once, atomically)."""
    if path not in _REPORTS:
        from lorashear.knowledge import load_report

        _REPORTS[path] = load_report(path)
        while len(_REPORTS) > 4:
            _REPORTS.popitem(last=False)
    return _REPORTS[path]


def _options(state: AppState, model_source: str | None) -> tuple[list[dict], int | None]:
    jobs = report_jobs(state)
    opts = [{"label": f"job {j.id} · {j.params.get('estimator')} · {Path(j.params.get('model', '')).name}"
                      + ("" if j.params.get("model") == model_source else " (another model)"), "value": j.id}
            for j in jobs]
    mine = [j.id for j in jobs if j.params.get("model") == model_source]
    return opts, (mine[0] if mine else (jobs[0].id if jobs else None))


def _figures(state: AppState, job_id: int | None) -> tuple[go.Figure, go.Figure, go.Figure, go.Figure, str]:
    from viz import knowledge_figures as kf

    j = state.registry.get(job_id)
    rep = load(j.artifacts["report"])
    meta = rep.meta
    note = (f"{meta.get('estimator')} on {meta.get('model', {}).get('class', '?')} "
            f"({meta.get('model', {}).get('source', '?')}), {len(rep.units):,} units, "
            f"{int(rep.units['unprunable'].sum()):,} marked unprunable, {meta.get('seconds', '?')} s, "
            f"created {meta.get('created', '?')}")
    figs = [kf.head_heatmap(rep), kf.channel_heatmap(rep), kf.layer_bars(rep), kf.score_distribution(rep)]
    for f in figs:
        f.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=60, b=50))
    return (*figs, note)


def layout(state: AppState, model_source: str | None = None) -> html.Div:
    why = _missing()
    opts, default = ([], None) if why else _options(state, model_source)
    empty = go.Figure()
    show = why is None and default is not None
    if why is None and default is None:
        why = ("run an analysis — no finished Analyze job yet. Start one in the Jobs tab (Analyze); its report "
               "appears here.")
    heads = channels = layers = dist = empty
    note = ""
    if show:
        heads, channels, layers, dist, note = _figures(state, default)
    graph = dict(config={"displaylogo": False})
    return html.Div([
        html.Div(card("Knowledge distribution", unavailable(why, id="knowledge-unavailable")),
                 style={"display": "none"} if show else {}, id="knowledge-missing"),
        html.Div([
            card("Knowledge report",
                 dcc.Dropdown(id="kn-report", options=opts, value=default, clearable=False),
                 html.P(note, id="kn-note", className="muted"),
                 html.P("Click a heatmap cell to select that layer's group in the graph and the groups table.",
                        className="muted hint")),
            html.Div([card("Layer × attention head", dcc.Graph(id="kn-heads", figure=heads, **graph), className="half"),
                      card("Layer × MLP channel bin", dcc.Graph(id="kn-channels", figure=channels, **graph),
                           className="half")], className="row"),
            html.Div([card("Per layer", dcc.Graph(id="kn-layers", figure=layers, **graph), className="half"),
                      card("Score distribution", dcc.Graph(id="kn-dist", figure=dist, **graph), className="half")],
                     className="row"),
            card("Pruning plan preview", html.P(
                "The Prune tab previews a plan at any target ratio with this report as its scores (choose it under "
                "'Knowledge report') and γ protecting its top: the units that would go, per layer and in total.",
                className="muted", id="kn-plan-pointer")),
        ], id="knowledge-content", style={} if show else {"display": "none"}),
    ], id="knowledge-view")


def group_of_click(state: AppState, job_id: int | None, click: dict | None, kind: str) -> str | None:
    """The group id of a clicked heatmap cell (the y axis is the layer)."""
    if not click or job_id is None:
        return None
    layer = click["points"][0].get("y")
    rep = load(state.registry.get(job_id).artifacts["report"])
    u = rep.units
    rows = u[(u["kind"] == kind) & (u["layer"] == layer)]
    return str(rows["group"].iloc[0]) if len(rows) else None


def register(app, state: AppState) -> None:
    if _missing():
        return

    @app.callback(
        Output("kn-heads", "figure"), Output("kn-channels", "figure"), Output("kn-layers", "figure"),
        Output("kn-dist", "figure"), Output("kn-note", "children"),
        Input("kn-report", "value"), prevent_initial_call=True,
    )
    def pick(job_id):
        if job_id is None:
            return (no_update,) * 5
        return _figures(state, job_id)

    @app.callback(
        Output("kn-report", "options"), Output("kn-report", "value"), Output("knowledge-missing", "style"),
        Output("knowledge-content", "style"),
        Input("tabs", "value"), State("kn-report", "value"), State("model-key", "data"),
        prevent_initial_call=True,
    )
    def refresh(tab, current, model_key):
        if tab != "knowledge":
            return (no_update,) * 4
        src = None
        if model_key is not None:
            try:
                src = state.registry.get(model_key).params.get("source")
            except Exception:  # the model job vanished from the registry: list every report
                src = None
        opts, default = _options(state, src)
        if not opts:
            return opts, None, {}, {"display": "none"}
        value = current if current in [o["value"] for o in opts] else default
        return opts, value, {"display": "none"}, {}
