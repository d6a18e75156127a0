"""Groups table (AG Grid): one row per group, sortable and filterable, multi-select into the shared
selection; a drill-down shows one group's members and the exact slices of any unit; units picked here can be
exported directly (an Export job: compress + save_pruned on exactly this hand selection)."""
from __future__ import annotations

import json
from typing import Any

import dash_ag_grid as dag

from dash import Input, Output, State, ctx, dcc, html, no_update

from ..components import card, fit_headers, human, kv_table, table
from ..model_view import ModelView

COLUMNS = [
    {"field": "id", "headerName": "group", "minWidth": 260, "filter": "agTextColumnFilter", "pinned": "left"},
    {"field": "kind", "filter": "agTextColumnFilter", "width": 110},
    {"field": "layer", "width": 90},
    {"field": "units", "type": "numericColumn", "filter": "agNumberColumnFilter", "width": 100},
    {"field": "params_per_unit", "headerName": "params/unit", "type": "numericColumn",
     "filter": "agNumberColumnFilter", "width": 120},
    {"field": "params", "headerName": "params", "type": "numericColumn", "filter": "agNumberColumnFilter",
     "width": 120},
    {"field": "prunable", "filter": "agTextColumnFilter", "width": 100},
    {"field": "planned", "headerName": "plan removes", "filter": "agTextColumnFilter", "width": 130,
     "headerTooltip": "units the Prune tab's current plan removes from this group"},
    {"field": "reason", "filter": "agTextColumnFilter", "minWidth": 300, "flex": 1, "tooltipField": "reason"},
    {"field": "members", "type": "numericColumn", "width": 100},
    {"field": "ops", "type": "numericColumn", "width": 80},
]


fit_headers(COLUMNS)
THOUSANDS = {"function": "params.value == null ? '' : d3.format(',')(params.value)"}  # 491,520, not 491520
for _c in COLUMNS:
    if _c.get("type") == "numericColumn":
        _c["valueFormatter"] = THOUSANDS

SCORE_COLUMNS = [
    {"field": "score", "headerName": "score", "type": "numericColumn", "filter": "agNumberColumnFilter", "width": 110,
     "valueFormatter": {"function": "params.value == null ? '' : d3.format('.4~g')(params.value)"}},
    {"field": "density", "headerName": "score/param", "type": "numericColumn", "filter": "agNumberColumnFilter",
     "width": 120, "valueFormatter": {"function": "params.value == null ? '' : d3.format('.3~e')(params.value)"}},
    {"field": "share", "headerName": "share %", "type": "numericColumn", "width": 100,
     "valueFormatter": {"function": "params.value == null ? '' : d3.format('.2f')(100 * params.value)"}},
    {"field": "kept_units", "headerName": "unprunable units", "type": "numericColumn", "width": 140,
     "valueFormatter": THOUSANDS},
]
fit_headers(SCORE_COLUMNS)


def scores_by_group(report) -> dict[str, dict]:
    """Per-group roll-up of a knowledge report (``KnowledgeReport.by_group``) for the table."""
    bg = report.by_group()
    return {str(r["group"]): {"score": float(r["score"]), "density": float(r["density"]), "share": float(r["share"]),
                              "kept_units": int(r["unprunable"])} for _, r in bg.iterrows()}


def newest_report_job(state, mv: ModelView | None):
    """The newest succeeded Analyze job with a report on the browsed model (None if there is none yet)."""
    from . import knowledge

    if mv is None or knowledge.missing_reason():
        return None
    mine, _ = knowledge.reports_of(state, mv)  # matched by the hashes the report stores, not by path
    return mine[0] if mine else None


def scores_for(state, mv: ModelView | None, job=None) -> tuple[dict | None, str, int | None]:
    """(group scores, where they come from, Analyze job id) from the newest report of the browsed model; the job id
    is what the page remembers, so a newer report (an Analyze job finishing) refreshes the grid."""
    from lorashear.errors import LorashearError

    from . import knowledge

    job = job or newest_report_job(state, mv)
    if job is None:
        return None, "", None
    try:
        rep = knowledge.load(job.artifacts["report"])
    except (LorashearError, OSError):
        return None, "", None
    return scores_by_group(rep), f"{rep.estimator} report of Analyze job {job.id}", job.id


def grid_rows(mv: ModelView | None, scores: dict[str, dict] | None) -> list[dict]:
    rows = mv.group_rows() if mv else []
    for r in rows:
        r.update((scores or {}).get(r["id"], {}))
    return rows


def grid_columns(scores: dict[str, dict] | None) -> list[dict]:
    return COLUMNS[:8] + (SCORE_COLUMNS if scores else []) + COLUMNS[8:]


def grid_note(scores: dict[str, dict] | None, scores_from: str) -> str:
    return ("Sort and filter with the column headers; select rows (ctrl/shift for several) to highlight their ops in "
            "the graph." + (f" Scores: {scores_from}." if scores else
                            " Scores appear once an Analyze job has a report for this model."))


def layout(mv: ModelView | None, scores: dict[str, dict] | None = None, scores_from: str = "",
           scores_job: int | None = None) -> html.Div:
    rows = grid_rows(mv, scores)
    columns = grid_columns(scores)
    return html.Div([
        dcc.Store(id="groups-scores-job", data=scores_job),
        dcc.Interval(id="groups-tick", interval=2000),  # mounted (ticking) only while the Groups tab is open
        card("Groups", html.P(grid_note(scores, scores_from), id="groups-note", className="muted"),
             dag.AgGrid(
                 id="groups-grid", rowData=rows, columnDefs=columns, getRowId="params.data.id",
                 defaultColDef={"sortable": True, "resizable": True, "filter": True, "wrapHeaderText": True,
                                "autoHeaderHeight": True},  # whole header names, never "params/u…"
                 dashGridOptions={"rowSelection": {"mode": "multiRow", "enableClickSelection": True},
                                  "animateRows": False, "tooltipShowDelay": 300},
                 rowClassRules={"row-unprunable": "params.data.prunable === 'no'",
                                "row-planned": "!!params.data.planned"},
                 style={"height": "46vh", "width": "100%"},
             )),
        card("Units of the selected group",
             html.Div([html.Label("Unit", htmlFor="unit-index"),
                       dcc.Input(id="unit-index", type="number", min=0, step=1, value=0, debounce=True,
                                 className="num"),
                       html.Span("the slices removed with this unit", className="muted")],
                      id="units-toolbar", className="toolbar", style={"display": "none"}),
             html.Div(html.P("Select exactly one group.", className="muted"), id="units-panel")),
        card("Export a hand selection",
             html.P("Select one group, choose a unit above and press 'Add this unit' (or edit the JSON: group id → "
                    "unit indices). Export removes exactly these units — compress + save_pruned, both verified — "
                    "and saves a smaller model you can browse, evaluate or recover.", className="muted"),
             html.Div([html.Button("Add this unit", id="hand-add", className="btn"),
                       html.Button("Clear", id="hand-clear", className="btn")], className="toolbar"),
             dcc.Textarea(id="hand-units", value="", placeholder='{"model.layers.0.self_attn:heads": [1]}',
                          style={"width": "100%", "height": "70px"}),
             html.Div(id="hand-units-err", className="field-error"),
             html.Button("Export", id="hand-export", className="btn primary", disabled=mv is None or mv.meta),
             html.Div(id="hand-msg", className="msg")),
    ], id="groups-view")


def units_panel(mv: ModelView, gid: str, unit: int) -> list:
    g = mv.group_by_id[gid]
    unit = max(0, min(int(unit or 0), g.n_units - 1))
    rows = []
    for m in g.members:
        idx = m.unit_indices([unit])
        shown = ", ".join(str(int(i)) for i in idx[:16]) + (" …" if len(idx) > 16 else "")
        shape = mv.opgraph.params.get(m.param, {}).get("shape")
        rows.append([m.param, str(shape), m.axis, m.role, len(idx), shown])
    info = kv_table([("group", gid), ("kind", g.kind), ("module", g.module or "(top)"),
                     ("units", f"{g.n_units:,}"), ("params per unit", f"{g.params_per_unit:,}"),
                     ("prunable", "yes" if g.prunable else f"no — {g.reason}"),
                     ("norm compensation", ", ".join(c.get("param", str(c)) for c in g.compensation) or "—")])
    return [
        info,
        table(["parameter", "shape", "axis", "role", "indices", f"indices of unit {unit}"], rows),
        html.P(f"{len(mv.group_ops.get(gid, g.nodes))} ops read or write this group; {human(g.params_per_unit * g.n_units)} parameters in its "
               f"units.", className="muted"),
    ]


def register_scores(app, state, get_model) -> None:
    """Scores appear in the grid when an Analyze job on this tab's model finishes, without a page reload: while the
    Groups tab is open (its own Interval; a hidden tab's components do not tick) and when it is opened, the newest
    report job is looked up (one registry query); the page remembers which report it shows
    (``groups-scores-job``), so nothing is redrawn until there is a newer one."""

    @app.callback(
        Output("groups-grid", "rowData"), Output("groups-grid", "columnDefs"),
        Output("groups-note", "children"), Output("groups-scores-job", "data"),
        Input("groups-tick", "n_intervals"), Input("tabs", "value"), State("groups-scores-job", "data"),
        State("model-key", "data"), State("plan-store", "data"),
        prevent_initial_call=True,
    )
    def refresh_scores(_n, tab, shown, model, plan):
        if tab != "groups":
            return no_update, no_update, no_update, no_update
        mv = get_model(model)
        job = newest_report_job(state, mv)
        if job is None or job.id == shown:
            return no_update, no_update, no_update, no_update
        scores, scores_from, job_id = scores_for(state, mv, job)
        if scores is None:
            return no_update, no_update, no_update, no_update
        rows = planned_rows(grid_rows(mv, scores), (plan or {}).get("plan"))
        return rows, grid_columns(scores), grid_note(scores, scores_from), job_id


def register(app, get_model) -> None:
    @app.callback(
        Output("units-panel", "children"), Output("units-toolbar", "style"), Output("unit-index", "max"),
        Output("unit-index", "value"),
        Input("sel", "data"), Input("unit-index", "value"), State("model-key", "data"),
        prevent_initial_call=True,
    )
    def show_units(sel, unit, model):
        mv = get_model(model)
        gids = (sel or {}).get("groups") or []
        if mv is None or len(gids) != 1 or gids[0] not in mv.group_by_id:
            msg = "Select exactly one group." if len(gids) != 1 else "Unknown group."
            return html.P(msg, className="muted"), {"display": "none"}, no_update, no_update
        g = mv.group_by_id[gids[0]]
        chosen = unit_of_selection(sel, ctx.triggered_id, unit)
        return units_panel(mv, gids[0], chosen), {}, g.n_units - 1, chosen if chosen != unit else no_update


def unit_of_selection(sel: dict | None, trigger: Any, typed: Any) -> int:
    """The unit the panel shows: the one a heatmap click chose (``sel["unit"]``, when the selection changed),
    else the one typed in the unit box."""
    picked = (sel or {}).get("unit") or {}
    if trigger == "sel" and picked.get("group") in ((sel or {}).get("groups") or [])[:1]:
        return int(picked["unit"])
    return int(typed or 0)


def check_selection(mv: ModelView, text: str) -> tuple[dict[str, list[int]] | None, str]:
    """Parse and check a hand selection against the browsed model: (removal, "") or (None, one-line message).
    The same rules ``compress`` applies in the job, checked here so the message lands next to the field."""
    from lorashear.export_settings import parse_units

    if not (text or "").strip():
        return None, "no unit selected: select a group, choose a unit and press 'Add this unit'"
    try:
        removal = parse_units(text or "")
    except ValueError as exc:
        return None, str(exc)
    for gid, units in removal.items():
        g = mv.group_by_id.get(gid)
        if g is None:
            return None, f"this model has no group '{gid}'"
        if not g.prunable:
            return None, f"group '{gid}' is not prunable: {g.reason}"
        if units[-1] >= g.n_units:
            return None, f"group '{gid}' has units 0..{g.n_units - 1}; got {units[-1]}"
        if len(units) >= g.n_units:
            return None, f"group '{gid}': keep at least one of its {g.n_units} units"
    return removal, ""


def add_unit(text: str, gid: str, unit: int) -> str:
    """The selection JSON with ``unit`` of ``gid`` added (an unreadable text starts over)."""
    try:
        cur = json.loads(text) if (text or "").strip() else {}
        cur = cur if isinstance(cur, dict) else {}
    except json.JSONDecodeError:
        cur = {}
    units = sorted({int(u) for u in cur.get(gid, []) if isinstance(u, int)} | {int(unit)})
    cur[gid] = units
    return json.dumps(cur)


def register_export(app, state, get_model) -> None:
    """Callbacks of the hand-selection export (they submit jobs, so they need the app state)."""

    @app.callback(
        Output("hand-units", "value"), Output("hand-units-err", "children", allow_duplicate=True),
        Input("hand-add", "n_clicks"), Input("hand-clear", "n_clicks"),
        State("sel", "data"), State("unit-index", "value"), State("hand-units", "value"), State("model-key", "data"),
        prevent_initial_call=True,
    )
    def edit(_a, _c, sel, unit, text, model):
        if ctx.triggered_id == "hand-clear":
            return "", ""
        mv = get_model(model)
        gids = (sel or {}).get("groups") or []
        if mv is None or len(gids) != 1 or gids[0] not in mv.group_by_id:
            return no_update, "select exactly one group in the table first"
        g = mv.group_by_id[gids[0]]
        if not g.prunable:
            return no_update, f"group '{g.id}' is not prunable: {g.reason}"
        u = max(0, min(int(unit or 0), g.n_units - 1))
        return add_unit(text, g.id, u), ""

    @app.callback(
        Output("hand-msg", "children"), Output("hand-units-err", "children"),
        Output("job-sel", "data", allow_duplicate=True), Output("tabs", "value", allow_duplicate=True),
        Input("hand-export", "n_clicks"), State("hand-units", "value"), State("model-key", "data"),
        prevent_initial_call=True,
    )
    def export(_n, text, model):
        from lorashear.errors import LorashearError
        from lorashear.jobs import JobParamError, submit

        mv = get_model(model)
        if mv is None:
            return no_update, "no model", no_update, no_update
        removal, why = check_selection(mv, text)
        if removal is None:
            return "", why, no_update, no_update
        try:
            job = submit(state.registry, "export", {"model": mv.source, "units": json.dumps(removal)}, state.runs_dir,
                         kinds=state.kinds, env=state.worker_env)
        except JobParamError as exc:
            return "", "; ".join(exc.errors.values()), no_update, no_update
        except LorashearError as exc:
            return html.Span(str(exc), className="error"), "", no_update, no_update
        return html.Span(f"Started job {job.id} (export).", className="ok"), "", job.id, "jobs"


def planned_rows(rows: list[dict], plan: dict | None) -> list[dict]:
    """The grid's rows with ``planned`` = "k of n" for every group the plan removes units from ("" otherwise)."""
    groups = (plan or {}).get("groups", {})
    out = []
    for r in rows or []:
        g = groups.get(r["id"])
        out.append({**r, "planned": f"{g['removed']} of {g['n_units']}" if g and g["removed"] else ""})
    return out
