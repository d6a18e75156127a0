"""Groups table (AG Grid): one row per group, sortable and filterable, multi-select into the shared
selection; a drill-down shows one group's members and the exact slices of any unit."""
from __future__ import annotations

import dash_ag_grid as dag
from dash import Input, Output, State, dcc, html, no_update

from ..components import card, human, kv_table, table
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
    {"field": "reason", "filter": "agTextColumnFilter", "minWidth": 300, "flex": 1, "tooltipField": "reason"},
    {"field": "members", "type": "numericColumn", "width": 100},
    {"field": "ops", "type": "numericColumn", "width": 80},
]


SCORE_COLUMNS = [
    {"field": "score", "headerName": "score", "type": "numericColumn", "filter": "agNumberColumnFilter", "width": 110,
     "valueFormatter": {"function": "params.value == null ? '' : d3.format('.4~g')(params.value)"}},
    {"field": "density", "headerName": "score/param", "type": "numericColumn", "filter": "agNumberColumnFilter",
     "width": 120, "valueFormatter": {"function": "params.value == null ? '' : d3.format('.3~e')(params.value)"}},
    {"field": "share", "headerName": "share %", "type": "numericColumn", "width": 100,
     "valueFormatter": {"function": "params.value == null ? '' : d3.format('.2f')(100 * params.value)"}},
    {"field": "kept_units", "headerName": "unprunable units", "type": "numericColumn", "width": 140},
]


def scores_by_group(report) -> dict[str, dict]:
    """Per-group roll-up of a knowledge report (``KnowledgeReport.by_group``) for the table."""
    bg = report.by_group()
    return {str(r["group"]): {"score": float(r["score"]), "density": float(r["density"]), "share": float(r["share"]),
                              "kept_units": int(r["unprunable"])} for _, r in bg.iterrows()}


def layout(mv: ModelView | None, scores: dict[str, dict] | None = None, scores_from: str = "") -> html.Div:
    rows = mv.group_rows() if mv else []
    for r in rows:
        r.update((scores or {}).get(r["id"], {}))
    columns = COLUMNS[:7] + (SCORE_COLUMNS if scores else []) + COLUMNS[7:]
    return html.Div([
        card("Groups", html.P("Sort and filter with the column headers; select rows (ctrl/shift for several) to "
                              "highlight their ops in the graph." + (f" Scores: {scores_from}." if scores else
                              " Scores appear once an Analyze job has a report for this model."),
                              className="muted"),
             dag.AgGrid(
                 id="groups-grid", rowData=rows, columnDefs=columns, getRowId="params.data.id",
                 defaultColDef={"sortable": True, "resizable": True, "filter": True},
                 dashGridOptions={"rowSelection": {"mode": "multiRow", "enableClickSelection": True},
                                  "animateRows": False, "tooltipShowDelay": 300},
                 rowClassRules={"row-unprunable": "params.data.prunable === 'no'"},
                 style={"height": "46vh", "width": "100%"},
             )),
        card("Units of the selected group",
             html.Div([html.Label("Unit", htmlFor="unit-index"),
                       dcc.Input(id="unit-index", type="number", min=0, step=1, value=0, debounce=True,
                                 className="num"),
                       html.Span("the slices removed with this unit", className="muted")],
                      id="units-toolbar", className="toolbar", style={"display": "none"}),
             html.Div(html.P("Select exactly one group.", className="muted"), id="units-panel")),
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
        html.P(f"{len(g.nodes)} ops carry this group; {human(g.params_per_unit * g.n_units)} parameters in its "
               f"units.", className="muted"),
    ]


def register(app, get_model) -> None:
    @app.callback(
        Output("units-panel", "children"), Output("units-toolbar", "style"), Output("unit-index", "max"),
        Input("sel", "data"), Input("unit-index", "value"), State("model-key", "data"),
        prevent_initial_call=True,
    )
    def show_units(sel, unit, model):
        mv = get_model(model)
        gids = (sel or {}).get("groups") or []
        if mv is None or len(gids) != 1 or gids[0] not in mv.group_by_id:
            msg = "Select exactly one group." if len(gids) != 1 else "Unknown group."
            return html.P(msg, className="muted"), {"display": "none"}, no_update
        g = mv.group_by_id[gids[0]]
        return units_panel(mv, gids[0], unit or 0), {}, g.n_units - 1
