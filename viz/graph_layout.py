"""Positions and cytoscape elements for the visible part of the hierarchy, computed in Python.

Layered layout (longest path from the inputs, top to bottom; nodes of a layer side by side, ordered by the
mean x of their predecessors) sent with cytoscape's ``preset`` layout: the browser never runs a layout
algorithm (dagre in the browser took 53 s at 1.9k nodes, research §3.2). Highlighting is done with element
classes and the stylesheet, never inline styles (dash-cytoscape #127).
"""
from __future__ import annotations

import math
from collections import defaultdict

import networkx as nx

from .hierarchy import Hierarchy, collapsed_edges, visible

DX, DY = 190, 70
FAN_OUT = 6  # a visible node feeding this many others is a broadcast input
LONG_SPAN = 3  # edges skipping more layers than this are drawn faint


def positions(order: list[str], edges: dict[tuple[str, str], int], rank_of_order: dict[str, int]) -> dict[str, tuple[float, float]]:
    """Longest-path layering over forward edges (by topological order), barycentric x within a layer."""
    preds: dict[str, list[str]] = defaultdict(list)
    for (a, b) in edges:
        if rank_of_order[a] < rank_of_order[b]:
            preds[b].append(a)
    layer: dict[str, int] = {}
    for n in order:  # order is topological by first op
        layer[n] = max((layer[p] + 1 for p in preds[n]), default=0)
    by_layer: dict[int, list[str]] = defaultdict(list)
    for n in order:
        by_layer[layer[n]].append(n)
    pos: dict[str, tuple[float, float]] = {}
    for lv in sorted(by_layer):
        members = by_layer[lv]
        if lv > 0:
            def bary(n: str) -> float:
                xs = [pos[p][0] for p in preds[n] if p in pos]
                return sum(xs) / len(xs) if xs else 0.0
            members = sorted(members, key=lambda n: (bary(n), rank_of_order[n]))
        width = len(members)
        for i, n in enumerate(members):
            pos[n] = ((i - (width - 1) / 2) * DX, lv * DY)
    return pos


CANVAS = (900.0, 560.0)  # the usual canvas (width, height) in pixels; a wider one just shows more on the sides
WRAP_LEVELS = 14  # an overview with more levels than this is wrapped into columns


def wrap_columns(pos: dict[str, tuple[float, float]], width: float = CANVAS[0],
                 height: float = CANVAS[1]) -> dict[str, tuple[float, float]]:
    """The layered overview (embed → blocks → head, one level under the other) folded into side-by-side columns
    read top to bottom, left to right, with as many levels per column as make the whole fit the canvas's aspect
    — so every block of a 32- or 80-block model is on screen at once, at a zoom where labels stay legible, where a
    single column would be 40–90 levels tall."""
    levels = sorted({y for _, y in pos.values()})
    n = len(levels)
    if n <= WRAP_LEVELS:
        return pos
    pitch = DX * 1.4  # a one-node-wide column and the gap to the next
    rows = max(WRAP_LEVELS // 2, math.ceil(math.sqrt(n * pitch * height / (width * DY))))
    index = {y: i for i, y in enumerate(levels)}
    half = defaultdict(float)  # per column: half the width of its widest level
    for x, y in pos.values():
        col = index[y] // rows
        half[col] = max(half[col], abs(x) + DX / 2)
    left, shift = 0.0, {}
    for col in range(max(half) + 1):
        shift[col] = left + half[col]
        left += 2 * half[col] + pitch - DX
    return {nid: (x + shift[index[y] // rows], (index[y] % rows) * DY) for nid, (x, y) in pos.items()}


def elements(h: Hierarchy, graph: nx.MultiDiGraph, expanded: list[str], highlight: set[str] | None = None,
             focus: str | None = None, node_groups: dict[str, list[str]] | None = None) -> list[dict]:
    """Cytoscape elements for the visible frontier.

    ``highlight``: graph node names whose visible display node gets class ``g-sel`` (the selected groups'
    member ops); ``focus``: display id of the selected node (class ``focus``)."""
    exp = set(expanded)
    vis = visible(h, exp)
    vis_set = set(vis)
    edges = collapsed_edges(h, graph, exp)
    order_idx = {n: i for i, n in enumerate(sorted(vis, key=lambda n: h.nodes[n].order))}
    pos = positions(sorted(vis, key=lambda n: h.nodes[n].order), edges, order_idx)
    wrapped = False
    if set(expanded) <= set(h.initial_expanded):  # the overview
        folded = wrap_columns(pos)
        wrapped, pos = folded is not pos, folded  # wrap_columns returns its input when the chain is short
    hl: set[str] = set()
    if highlight:
        for op in highlight:
            for nid in h.chain.get(op, ()):
                if nid in vis_set:
                    hl.add(nid)
                    break
    grouped = set()
    if node_groups:
        for nid in vis:
            if any(o in node_groups for o in h.nodes[nid].op_names):
                grouped.add(nid)
    boxes = boxed_modules(h, expanded)
    els: list[dict] = [{"data": {"id": BOX + b, "label": _box_label(h.nodes[b]), "kind": "box",
                                 **({"parent": BOX + o} if (o := _box_of(h, b, boxes)) else {})},
                        "classes": "box"} for b in boxes]
    for nid in vis:
        n = h.nodes[nid]
        classes = [n.kind]
        if n.children:
            classes.append("expandable")
        if nid in hl:
            classes.append("g-sel")
        if nid == focus:
            classes.append("focus")
        if nid in grouped:
            classes.append("grouped")
        if wrapped:
            classes.append("overview")
        x, y = pos[nid]
        label = n.label
        if n.kind == "module":
            label = f"{n.label}\n{n.module_class}" if n.module_class else n.label
        elif n.kind == "op" and graph.nodes[n.op_names[0]].get("shape"):
            label = f"{n.label}\n{graph.nodes[n.op_names[0]]['shape']}"
        data = {"id": nid, "label": label, "kind": n.kind, "n_ops": len(n.op_names)}
        if (box := _box_of(h, nid, boxes)) is not None:
            data["parent"] = BOX + box
        els.append({"data": data, "position": {"x": x, "y": y}, "classes": " ".join(classes)})
    fan_out: dict[str, int] = defaultdict(int)
    for (a, _b) in edges:
        fan_out[a] += 1
    for (a, b), k in edges.items():
        if order_idx[a] > order_idx[b]:
            cls = "back"
        elif fan_out[a] >= FAN_OUT or pos[b][1] - pos[a][1] > LONG_SPAN * DY:
            cls = "fan"  # broadcast inputs (rotary tables, masks) and long skips: drawn faint
        elif pos[b][1] < pos[a][1]:
            cls = "wrap"  # the chain continuing at the top of the next column
        else:
            cls = ""
        els.append({"data": {"id": f"{a}->{b}", "source": a, "target": b, "n": k}, "classes": cls})
    return els


BOX = "box:"  # id prefix of the compound node drawn around an expanded module's contents


def boxed_modules(h: Hierarchy, expanded: list[str]) -> list[str]:
    """The expanded modules drawn as boxes (cytoscape compound nodes) around what they expanded into, so a
    module's ops read as belonging to it. The containers opened on first view (the model, the list of blocks)
    are not boxed: one frame around everything says nothing."""
    initial = set(h.initial_expanded)
    return [e for e in expanded if e in h.nodes and e not in initial and h.nodes[e].children]


def _box_of(h: Hierarchy, nid: str, boxes: list[str]) -> str | None:
    """The innermost boxed module that contains display node ``nid`` (not ``nid`` itself), or None."""
    inside = set(boxes)
    p = h.nodes[nid].parent
    while p:
        if p in inside:
            return p
        p = h.nodes[p].parent if p in h.nodes else None
    return None


def _box_label(n) -> str:
    return f"{n.module or n.label} · {n.module_class}" if n.module_class else (n.module or n.label)


def viewport(els: list[dict], focus_ids: set[str] | None = None, width: float = CANVAS[0],
             height: float = CANVAS[1]) -> tuple[dict, float]:
    """(pan, zoom) showing ``focus_ids`` (e.g. what a block just expanded into) with a rank of context; with
    none, the whole overview when it is wrapped into columns (``wrap_columns``), else the top of the graph —
    never a long chain fitted into a few pixels."""
    nodes = [e for e in els if "position" in e]  # drawn nodes (not edges, not the boxes sized by their contents)
    if not nodes:
        return {"x": 0, "y": 0}, 1.0
    pick = [e for e in nodes if e["data"]["id"] in (focus_ids or ())]
    floor = 0.55  # labels stay readable; pan for more
    if not pick and any("overview" in e.get("classes", "") for e in nodes):
        pick, floor = nodes, 0.4  # all of the overview: its nodes' larger font keeps labels legible at this zoom
    if not pick:
        top = min(e["position"]["y"] for e in nodes)
        pick = [e for e in nodes if e["position"]["y"] <= top + 8 * DY]
    xs = [e["position"]["x"] for e in pick]
    ys = [e["position"]["y"] for e in pick]
    x0, x1 = min(xs) - DX / 2, max(xs) + DX / 2
    y0, y1 = min(ys) - DY, max(ys) + DY
    zoom = max(floor, min(1.1, width / (x1 - x0), height / (y1 - y0)))
    return {"x": width / 2 - zoom * (x0 + x1) / 2, "y": 24 - zoom * y0}, zoom


STYLESHEET = [
    {"selector": "node", "style": {
        "shape": "round-rectangle", "width": 150, "height": 36, "label": "data(label)",
        "text-valign": "center", "text-halign": "center", "text-wrap": "wrap", "font-size": 10,
        "background-color": "#eef2f7", "border-width": 1, "border-color": "#8a9bb0", "color": "#1d2733",
        "min-zoomed-font-size": 6}},
    {"selector": "node.module", "style": {"background-color": "#dbe7f5", "border-color": "#4a6fa5",
                                          "border-width": 2, "font-weight": "bold"}},
    {"selector": "node.bundle", "style": {"background-color": "#f3eadb", "border-color": "#a57f4a",
                                          "border-style": "solid"}},
    {"selector": "node.box", "style": {"background-color": "#f4f7fb", "background-opacity": 0.6,
                                       "border-style": "dashed", "border-color": "#4a6fa5", "border-width": 1.5,
                                       "text-valign": "top", "text-halign": "center", "font-size": 11,
                                       "font-weight": "bold", "color": "#4a6fa5", "padding": "14px"}},
    {"selector": "node.op", "style": {"width": 120, "height": 30, "font-size": 9}},
    {"selector": "node.overview", "style": {"width": 170, "height": 44, "font-size": 15}},
    {"selector": "node.io", "style": {"shape": "ellipse", "background-color": "#e6e6e6", "width": 110}},
    {"selector": "node.grouped", "style": {"border-color": "#2f8f5b"}},
    {"selector": "node.g-sel", "style": {"background-color": "#ffd45c", "border-color": "#c17d00",
                                         "border-width": 3}},
    {"selector": "node.focus", "style": {"border-color": "#d6336c", "border-width": 4}},
    {"selector": "edge", "style": {"curve-style": "haystack", "width": 1.2, "line-color": "#9aa7b6",
                                   "haystack-radius": 0}},
    {"selector": "edge.back", "style": {"line-color": "#d0d6de"}},
    {"selector": "edge.fan", "style": {"line-color": "#b8c4d1", "opacity": 0.2, "width": 0.6}},
    {"selector": "edge.wrap", "style": {"line-color": "#c9d2dd", "line-style": "dashed", "opacity": 0.6}},
]
