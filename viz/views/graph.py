"""Graph browser: the chain of blocks, expanded on click to modules and ops, with group highlighting.

State lives in two stores: ``graph-state`` (the ordered list of expanded display nodes: order matters,
the oldest expansion is collapsed first when the visible-node cap is hit) and the shared ``sel``
selection store (selected groups -> class ``g-sel`` on the nodes containing their ops).
"""
from __future__ import annotations

import dash_cytoscape as cyto
from dash import ALL, Input, Output, State, ctx, html, no_update

from .. import hierarchy as H
from ..components import card, human, kv_table
from ..graph_layout import BOX, STYLESHEET, elements, viewport
from ..model_view import ModelView


def initial_state(mv: ModelView | None) -> dict:
    """``expanded``: display ids, oldest first; ``last``: the node expanded last (the view centres on it)."""
    return {"expanded": list(mv.hierarchy.initial_expanded) if mv else [], "model": mv.job_id if mv else None,
            "last": None}


def focus_ids(mv: ModelView, state: dict, els: list[dict]) -> set[str]:
    last = state.get("last")
    if not last or last not in mv.hierarchy.nodes:
        return set()
    return {e["data"]["id"] for e in els if "position" in e  # drawn nodes: not edges, not module boxes
            and (e["data"]["id"] == last or last in H.ancestors(mv.hierarchy, e["data"]["id"]))}


def _highlight(mv: ModelView, sel: dict | None) -> set[str]:
    """The ops to light for the selected groups: every op that reads or writes a member (``group_op_map``)."""
    ops: set[str] = set()
    for gid in (sel or {}).get("groups", []) or []:
        ops.update(mv.group_ops.get(gid, ()))
    return ops


def render(mv: ModelView, state: dict, sel: dict | None) -> list[dict]:
    focus = (sel or {}).get("node")
    return elements(mv.hierarchy, mv.graph, state["expanded"], _highlight(mv, sel), focus, mv.op_groups)


def layout(mv: ModelView | None, cap: int) -> html.Div:
    if mv is None:
        return html.Div(html.P("No model loaded.", className="muted"), id="graph-view")
    state = initial_state(mv)
    els = render(mv, state, None)
    n_vis = sum(1 for e in els if "position" in e)
    pan, zoom = viewport(els)
    return html.Div([
        html.Div([
            html.Div([
                html.Button("Collapse all", id="graph-collapse-all", className="btn"),
                html.Span(f"{n_vis} nodes visible (cap {cap})", id="graph-count", className="muted"),
                html.Span("Click a block to expand it; select groups in the Groups tab to highlight them.",
                          className="muted hint"),
            ], className="toolbar"),
            cyto.Cytoscape(
                id="cy", elements=els, layout={"name": "preset", "fit": False}, pan=pan, zoom=zoom,
                stylesheet=STYLESHEET, style={"width": "100%", "height": "72vh"},
                minZoom=0.05, maxZoom=3, wheelSensitivity=0.3, autoRefreshLayout=False,
                boxSelectionEnabled=False, autounselectify=True,
            ),
        ], className="graph-main"),
        html.Div(card("Details", html.Div(html.P("Click a node.", className="muted"), id="node-details")),
                 className="graph-side"),
    ], id="graph-view", className="graph-view")


# ------------------------------------------------------------------------------------------ details
def _group_links(mv: ModelView, gids: list[str]) -> html.Div:
    if not gids:
        return html.Span("none", className="muted")
    return html.Div([
        html.Button(f"{gid} ({mv.group_by_id[gid].kind}{'' if mv.group_by_id[gid].prunable else ', not prunable'})",
                    id={"type": "group-link", "gid": gid}, className="link")
        for gid in gids
    ], className="links")


def details(mv: ModelView, nid: str, expanded: list[str]) -> list:
    h = mv.hierarchy
    if nid not in h.nodes:
        return [html.P("This node is not in the current graph.", className="muted")]
    n = h.nodes[nid]
    exp = set(expanded)
    crumbs = []
    for a in H.ancestors(h, nid)[1:]:
        crumbs.append(html.Button(f"▾ {h.nodes[a].label}", id={"type": "gs-act", "act": "collapse", "nid": a},
                                  className="crumb", title=f"collapse {h.nodes[a].module or a}"))
    out: list = [html.Div(crumbs, className="crumbs")] if crumbs else []
    if n.kind in ("op", "io"):
        name = n.op_names[0]
        a = mv.graph.nodes[name]
        params = a.get("params") or []
        out.append(kv_table([
            ("node", name), ("op", a.get("op", "")), ("target", a.get("target", "")),
            ("module", a.get("module") or "(top)"), ("module class", a.get("module_class") or "—"),
            ("output shape", str(a.get("shape"))), ("dtype", a.get("dtype") or "—"),
            ("FLOPs", f"{a.get('flops', 0):,}"),
            ("inputs", ", ".join(f"{u} {d.get('shape', '')}" for u, _, d in mv.graph.in_edges(name, data=True))
             or "—"),
            ("parameters", html.Ul([html.Li(f"{p} {mv.opgraph.params.get(p, {}).get('shape')}") for p in params])
             if params else "—"),
        ]))
        gids = mv.op_groups.get(name, [])
        out += [html.H4(f"Groups spanning this op ({len(gids)})"), _group_links(mv, gids)]
        return out
    ops = set(n.op_names)
    gids = [g.id for g in mv.groups if g.module == n.module or (n.module and g.module.startswith(n.module + "."))
            ] if n.kind == "module" else []
    touching = sorted({gid for o in n.op_names for gid in mv.op_groups.get(o, [])} - set(gids))
    rows = [("module", n.module or "(top)"), ("class", n.module_class or "—"), ("ops inside", f"{len(ops):,}")]
    if n.kind == "module":
        rows.append(("parameters", f"{n.n_params:,} ({human(n.n_params)})"))
    out.append(kv_table(rows))
    buttons = []
    if n.children and nid not in exp:
        buttons += [html.Button("Expand", id={"type": "gs-act", "act": "expand", "nid": nid}, className="btn"),
                    html.Button("Expand to ops", id={"type": "gs-act", "act": "deep", "nid": nid}, className="btn")]
    elif nid in exp:
        buttons.append(html.Button("Collapse", id={"type": "gs-act", "act": "collapse", "nid": nid},
                                   className="btn"))
    out.append(html.Div(buttons, className="toolbar"))
    out += [html.H4(f"Groups of this module ({len(gids)})"), _group_links(mv, gids),
            html.H4(f"Other groups through its ops ({len(touching)})"), _group_links(mv, touching)]
    return out


# ------------------------------------------------------------------------------------------ callbacks
def register(app, get_model) -> None:
    """``get_model(job_id) -> ModelView | None``."""

    @app.callback(
        Output("graph-state", "data"),
        Input("cy", "tapNode"), Input("graph-collapse-all", "n_clicks"),
        Input({"type": "gs-act", "act": ALL, "nid": ALL}, "n_clicks"),
        State("graph-state", "data"), State("cap", "data"),
        prevent_initial_call=True,
    )
    def control(tap, _collapse_all, _acts, state, cap):
        mv = get_model(state.get("model"))
        if mv is None:
            return no_update
        trig = ctx.triggered_id
        h = mv.hierarchy
        expanded = list(state["expanded"])
        last = None
        if trig == "cy":
            nid = (tap or {}).get("data", {}).get("id") or ""
            if nid.startswith(BOX) and nid[len(BOX):] in expanded:  # a click on a module's box folds it again
                expanded, last = H.collapse(h, expanded, nid[len(BOX):]), nid[len(BOX):]
                return {**state, "expanded": expanded, "last": last}
            if not nid or nid not in h.nodes or not h.nodes[nid].children:
                return no_update
            expanded = H.expand(h, expanded, nid, cap)
            last = nid
        elif trig == "graph-collapse-all":
            expanded = list(h.initial_expanded)
        elif isinstance(trig, dict) and trig.get("type") == "gs-act":
            if not any(t["value"] for t in ctx.triggered):  # buttons re-created, not clicked
                return no_update
            nid, act = trig["nid"], trig["act"]
            if act == "collapse":
                expanded = H.collapse(h, expanded, nid)
                last = nid
                if nid in h.initial_expanded:  # keep the chain of blocks open
                    expanded = H.expand(h, expanded, nid, cap)
            else:
                expanded = H.expand(h, expanded, nid, cap, deep=(act == "deep"))
                last = nid
        else:
            return no_update
        return {**state, "expanded": expanded, "last": last}

    @app.callback(
        Output("cy", "elements"), Output("graph-count", "children"), Output("cy", "pan"), Output("cy", "zoom"),
        Input("graph-state", "data"), Input("sel", "data"), State("cap", "data"),
        prevent_initial_call=True,
    )
    def draw(state, sel, cap):
        mv = get_model(state.get("model"))
        if mv is None:
            return no_update, no_update, no_update, no_update
        els = render(mv, state, sel)
        n_vis = sum(1 for e in els if "position" in e)
        if ctx.triggered_id == "sel":  # a new highlight: keep the user's view
            return els, f"{n_vis} nodes visible (cap {cap})", no_update, no_update
        pan, zoom = viewport(els, focus_ids(mv, state, els))
        return els, f"{n_vis} nodes visible (cap {cap})", pan, zoom

    @app.callback(
        Output("node-details", "children"),
        Input("sel", "data"), Input("graph-state", "data"),
        prevent_initial_call=True,
    )
    def show_details(sel, state):
        mv = get_model(state.get("model"))
        nid = (sel or {}).get("node")
        if mv is None or not nid:
            return html.P("Click a node.", className="muted")
        return details(mv, nid, state["expanded"])
