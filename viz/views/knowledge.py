"""Knowledge distribution: layer × kv-head, layer × GQA query-head and layer × channel-bin heatmaps, per-layer
bars and the score distribution of a knowledge report written by an Analyze job (``lorashear.knowledge``).

Only reports *of the browsed model* are listed: a report is matched to the model by the identity it stores
(config and parameter-shape hashes, ``lorashear.knowledge.report.same_model``) against the identity of the
browsed graph, never by path — a 70B ``--meta`` app must not open the demo model's report, and a heatmap click
must never select groups in another model's graph. With none, the view says so. Clicking a heatmap cell
selects that cell's group *and unit* (shared selection: the graph, the groups table and its unit panel
follow). When the Prune tab has a previewed plan for this model, the units it would remove are outlined.
The figures are ``viz.knowledge_figures`` (shared with ``lorashear analyze --figures``).
"""
from __future__ import annotations

import importlib
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from dash import Input, Output, State, dcc, html, no_update

from lorashear.errors import LorashearError

from ..components import card, unavailable
from ..session import AppState

_REPORTS: "OrderedDict[str, object]" = OrderedDict()
_METAS: dict[str, dict | None] = {}  # report path -> meta (reports are written once, atomically)
_IDENTITY: dict[int, dict] = {}  # graph job id -> identity of the traced model
# heatmap -> the report kind its cells are units of
CLICK_KINDS = {"kn-heads": "attention", "kn-qheads": "query_heads", "kn-channels": "mlp"}


def missing_reason() -> str | None:
    """Why reports cannot be shown, or None."""
    if importlib.util.find_spec("lorashear.knowledge") is None:
        return "run an analysis — the knowledge analysis (lorashear.knowledge) has not landed in the library yet."
    if importlib.util.find_spec("viz.knowledge_figures") is None:
        return "run an analysis — the knowledge figures (viz.knowledge_figures) have not landed yet."
    return None


def report_jobs(state: AppState) -> list:
    """Every succeeded Analyze job whose report file exists (any model: filter with ``reports_of``)."""
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


def report_meta(path: str) -> dict | None:
    """The report's meta without its unit table (None when the file is not a readable report)."""
    if path not in _METAS:
        from lorashear.knowledge.report import read_meta

        try:
            _METAS[path] = read_meta(path)
        except (LorashearError, OSError, ValueError):
            _METAS[path] = None
    return _METAS[path]


def model_identity(mv: Any) -> dict:
    """Identity (config + parameter-shape hashes) of the browsed model, from its traced graph."""
    if mv.job_id not in _IDENTITY:
        from lorashear.knowledge.report import graph_identity

        _IDENTITY[mv.job_id] = graph_identity(mv.opgraph)
    return _IDENTITY[mv.job_id]


def is_of_model(path: str, mv: Any) -> bool:
    """Whether the report at ``path`` describes the browsed model (same config and parameter shapes)."""
    from lorashear.knowledge.report import same_model

    meta = report_meta(path)
    return mv is not None and meta is not None and same_model(meta.get("model"), model_identity(mv))


def reports_of(state: AppState, mv: Any) -> tuple[list, int]:
    """(Analyze jobs whose report describes the browsed model, newest first; how many others were left out)."""
    jobs = report_jobs(state)
    mine = [j for j in jobs if is_of_model(j.artifacts["report"], mv)]
    return mine, len(jobs) - len(mine)


def _options(jobs: list) -> list[dict]:
    return [{"label": f"job {j.id} · {j.params.get('estimator')} · {Path(str(j.params.get('model', ''))).name}",
             "value": j.id} for j in jobs]


def _none_text(mv: Any, others: int) -> str:
    if mv is None:
        return "No model is being browsed: open one (Jobs: a Graph job, then 'Browse this graph'), then run an analysis."
    text = (f"No knowledge report of this model ({mv.source}) yet — run an analysis: start an Analyze job on it in "
            f"the Jobs tab; its report appears here.")
    if others:
        text += (f" {others} report{'s' if others > 1 else ''} of other models {'are' if others > 1 else 'is'} not "
                 f"shown: a report only describes the model it was made on.")
    return text


def planned_units(plan: dict | None, mv: Any) -> dict[str, list[int]] | None:
    """The units the Prune tab's previewed plan removes ({group id: units}), if it is a plan of this model."""
    if not plan or mv is None or plan.get("model_job") != mv.job_id:
        return None
    return (plan.get("plan") or {}).get("removal") or None


def _note(rep: Any) -> str:
    meta = rep.meta
    u = rep.units
    q = int((u["kind"] == "query_heads").sum())
    note = (f"{meta.get('estimator')} on {meta.get('model', {}).get('class', '?')} "
            f"({meta.get('model', {}).get('source', '?')}), {int(rep.rollup_mask().sum()):,} units, "
            f"{int(rep.rollup_units()['unprunable'].sum()):,} marked unprunable, {meta.get('seconds', '?')} s, "
            f"created {meta.get('created', '?')}.")
    if q:
        note += f" {q:,} GQA query-head units scored apart (not in any total)."
    for kind, why in ((meta.get("notes") or {}).get("unscored_kinds") or {}).items():
        note += f" {kind} not scored by {meta.get('estimator')}: {why}."
    return note


def figures(rep: Any, scale: str = "log", planned: dict | None = None) -> list[go.Figure]:
    """The five figures of the view: kv heads, query heads, MLP channel bins, per layer, distribution."""
    from viz import knowledge_figures as kf

    figs = [kf.head_heatmap(rep, scale=scale, planned=planned), kf.query_head_heatmap(rep, scale=scale, planned=planned),
            kf.channel_heatmap(rep, scale=scale, planned=planned), kf.layer_bars(rep), kf.score_distribution(rep)]
    for f in figs:
        f.update_layout(template="plotly_white", margin=dict(l=60, r=20, t=60, b=50))
    return figs


def _figures(state: AppState, job_id: int | None, scale: str, planned: dict | None) -> tuple:
    rep = load(state.registry.get(job_id).artifacts["report"])
    return (*figures(rep, scale, planned), _note(rep))


def layout(state: AppState, mv: Any = None) -> html.Div:
    why = missing_reason()
    jobs, others = ([], 0) if why or mv is None else reports_of(state, mv)
    opts = _options(jobs)
    default = jobs[0].id if jobs else None
    show = why is None and default is not None
    if why is None and default is None:
        why = _none_text(mv, others)
    empty = go.Figure()
    heads = qheads = channels = layers = dist = empty
    note = ""
    if show:
        heads, qheads, channels, layers, dist, note = _figures(state, default, "log", None)
    graph = dict(config={"displaylogo": False})
    return html.Div([
        html.Div(card("Knowledge distribution", unavailable(why, id="knowledge-unavailable")),
                 style={"display": "none"} if show else {}, id="knowledge-missing"),
        html.Div([
            card("Knowledge report",
                 dcc.Dropdown(id="kn-report", options=opts, value=default, clearable=False),
                 html.P(note, id="kn-note", className="muted"),
                 html.Div([html.Label("Colour scale (each heatmap its own)"),
                           dcc.RadioItems(id="kn-scale", value="log", inline=True, options=[
                               {"label": "log", "value": "log"},
                               {"label": "linear, clipped to p2–p98", "value": "clipped"},
                               {"label": "linear", "value": "linear"}])], className="toolbar"),
                 html.P("Only reports of the browsed model are listed. Click a heatmap cell to select that unit of "
                        "that layer's group in the graph and the groups table; units the Prune tab's plan would "
                        "remove are outlined in red.", className="muted hint")),
            html.Div([card("Layer × attention head (kv head with its query heads)",
                           dcc.Graph(id="kn-heads", figure=heads, **graph), className="half"),
                      card("Layer × GQA query head (scored apart)", dcc.Graph(id="kn-qheads", figure=qheads, **graph),
                           className="half")], className="row"),
            html.Div([card("Layer × MLP channel bin", dcc.Graph(id="kn-channels", figure=channels, **graph),
                           className="half"),
                      card("Per layer", dcc.Graph(id="kn-layers", figure=layers, **graph), className="half")],
                     className="row"),
            card("Score distribution", dcc.Graph(id="kn-dist", figure=dist, **graph)),
            card("Pruning plan preview", html.P(
                "The Prune tab previews a plan at any target ratio with this report as its scores (choose it under "
                "'Knowledge report') and γ protecting its top: the units that would go are outlined here.",
                className="muted", id="kn-plan-pointer")),
        ], id="knowledge-content", style={} if show else {"display": "none"}),
    ], id="knowledge-view")


def group_of_click(state: AppState, job_id: int | None, click: dict | None, kind: str,
                   mv: Any) -> tuple[str, int] | None:
    """(group id, unit) of a clicked heatmap cell of the browsed model ``mv``, or None.

    The y of a cell is its layer and the x its unit (a head unit, or the first channel of an MLP bin); the
    click used to keep only the layer, so the selection always fell on unit 0. A report that does not describe
    ``mv``, or a group ``mv`` does not have, selects nothing: a click never acts across models."""
    if not click or job_id is None or mv is None or not click.get("points"):
        return None
    point = click["points"][0]
    layer, x = point.get("y"), point.get("x")
    if layer is None or x is None:
        return None
    path = state.registry.get(job_id).artifacts.get("report")
    if not path or not is_of_model(path, mv):
        return None
    u = load(path).units
    rows = u[(u["kind"] == kind) & (u["layer"] == int(layer))]
    if rows.empty:
        return None
    gid = str(rows["group"].iloc[0])
    g = mv.group_by_id.get(gid)
    if g is None:
        return None
    unit = int(round(float(x)))
    if not 0 <= unit < g.n_units:
        return None
    return gid, unit


def register(app, state: AppState, get_model) -> None:
    if missing_reason():
        return

    @app.callback(
        Output("kn-heads", "figure"), Output("kn-qheads", "figure"), Output("kn-channels", "figure"),
        Output("kn-layers", "figure"), Output("kn-dist", "figure"), Output("kn-note", "children"),
        Input("kn-report", "value"), Input("kn-scale", "value"), Input("plan-store", "data"),
        State("model-key", "data"), prevent_initial_call=True,
    )
    def pick(job_id, scale, plan, model_key):
        mv = get_model(model_key)
        if job_id is None or mv is None:
            return (no_update,) * 6
        return _figures(state, job_id, scale or "log", planned_units(plan, mv))

    @app.callback(
        Output("kn-report", "options"), Output("kn-report", "value"), Output("knowledge-missing", "style"),
        Output("knowledge-content", "style"), Output("knowledge-unavailable", "children"),
        Input("tabs", "value"), State("kn-report", "value"), State("model-key", "data"),
        prevent_initial_call=True,
    )
    def refresh(tab, current, model_key):
        if tab != "knowledge":
            return (no_update,) * 5
        mv = get_model(model_key)
        jobs, others = reports_of(state, mv) if mv is not None else ([], 0)
        opts = _options(jobs)
        if not opts:
            return opts, None, {}, {"display": "none"}, [html.Strong("Not available yet. "), _none_text(mv, others)]
        value = current if current in [o["value"] for o in opts] else opts[0]["value"]
        return opts, value, {"display": "none"}, {}, no_update
