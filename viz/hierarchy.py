"""The collapsible module hierarchy the graph browser shows, and which of its nodes are visible.

Never lay out the whole op graph (research §5.1): the op graph is folded by module path into a tree whose
leaves are ops. The browser shows a *frontier* of that tree: a node is visible when all its ancestors are
expanded and it is not. Expanding a node replaces it by its children; edges between visible nodes are the
op edges mapped to their visible ancestors. A module with a single op is shown as that op, and a module's
own ops are bundled into one node when it holds the chain of blocks and has many of them (e.g. the
causal-mask ops of ``LlamaModel``), so the overview stays a chain of blocks.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import networkx as nx

BUNDLE_OWN_OPS_OVER = 6  # own ops of a module with sub-modules are bundled above this count
_NUMERIC = re.compile(r"^\d+$")


@dataclass
class DNode:
    """A display node: a module (``m:<path>``), a bundle of a module's own ops (``x:<path>``), or an op
    (``o:<graph node>``; input/output nodes too)."""

    id: str
    kind: str  # module | bundle | op | io
    label: str
    parent: str | None
    order: int = 0  # first topological index of the ops inside; children are kept in this order
    children: list[str] = field(default_factory=list)
    module: str = ""
    module_class: str = ""
    op_names: list[str] = field(default_factory=list)  # graph nodes inside (all descendants)
    n_params: int = 0
    layer: int | None = None


@dataclass
class Hierarchy:
    nodes: dict[str, DNode]
    root: str
    chain: dict[str, list[str]]  # graph node -> display ids from the root's child down to its leaf
    initial_expanded: list[str]  # containers opened on first view (the chain of blocks)
    topo: dict[str, int]


def _leaf_name(path: str) -> str:
    return path.rsplit(".", 1)[-1] if path else ""


def layer_of(path: str) -> int | None:
    """Index of the numbered block a module path is in (``model.layers.3.mlp`` -> 3), else None."""
    for part in path.split("."):
        if _NUMERIC.match(part):
            return int(part)
    return None


def build(graph: nx.MultiDiGraph, tree: dict) -> Hierarchy:
    """Fold an op graph into the display tree, using ``lorashear.module_tree`` for classes and sizes."""
    # program order (the order torch.export emitted the ops) is a topological order that also keeps each
    # block's ops together, unlike an arbitrary topological sort
    topo = {n: i for i, n in enumerate(graph.nodes)}
    info: dict[str, dict] = {}

    def walk(t: dict) -> None:
        info[t["path"]] = t
        for c in t["children"]:
            walk(c)

    walk(tree)

    # ops grouped by the module they belong to; io nodes hang from the root
    own: dict[str, list[str]] = {}
    for name, attrs in graph.nodes(data=True):
        path = attrs.get("module", "") if attrs.get("kind") == "op" else ""
        own.setdefault(path, []).append(name)
        # make sure every ancestor module exists even if module_tree did not list it
        parts = path.split(".") if path else []
        for i in range(len(parts)):
            p = ".".join(parts[: i + 1])
            info.setdefault(p, {"path": p, "class": "", "n_ops": 0, "n_params": 0, "children": []})

    sub: dict[str, list[str]] = {}
    for p in info:
        if p:
            parent = p.rsplit(".", 1)[0] if "." in p else ""
            sub.setdefault(parent, []).append(p)

    nodes: dict[str, DNode] = {}
    chain: dict[str, list[str]] = {}

    def op_node(name: str, parent: str, label: str | None = None) -> str:
        attrs = graph.nodes[name]
        kind = "io" if attrs.get("kind") in ("input", "output") else "op"
        nid = f"o:{name}"
        nodes[nid] = DNode(nid, kind, label or attrs.get("op", name), parent, topo[name],
                           module=attrs.get("module", ""), module_class=attrs.get("module_class", ""),
                           op_names=[name], layer=layer_of(attrs.get("module", "")))
        return nid

    def module_ops(path: str) -> list[str]:
        out = list(own.get(path, []))
        for c in sub.get(path, []):
            out.extend(module_ops(c))
        return out

    def _is_container(path: str) -> bool:
        kids = sub.get(path, [])
        return bool(kids) and all(_NUMERIC.match(_leaf_name(k)) for k in kids)

    def make(path: str, parent: str | None) -> str | None:
        ops = module_ops(path)
        if not ops:
            return None  # parameter-only module (e.g. unused): nothing to draw
        children_paths = [c for c in sub.get(path, []) if module_ops(c)]
        if path and not children_paths and len(ops) == 1:
            return op_node(ops[0], parent or "", f"{_leaf_name(path)} · {graph.nodes[ops[0]].get('op', '')}")
        nid = f"m:{path}"
        t = info.get(path, {})
        label = _leaf_name(path) or t.get("class") or "model"
        if _NUMERIC.match(label) and "." in path:  # "layers.3", not "3"
            label = f"{_leaf_name(path.rsplit('.', 1)[0])}.{label}"
        node = DNode(nid, "module", label, parent,
                     min(topo[o] for o in ops), module=path, module_class=t.get("class", ""),
                     op_names=ops, n_params=int(t.get("n_params", 0)), layer=layer_of(path))
        if path and not node.module_class and _NUMERIC.match(_leaf_name(children_paths[0]) if children_paths else ""):
            node.module_class = "ModuleList"
        nodes[nid] = node
        kids: list[str] = []
        for c in children_paths:
            k = make(c, nid)
            if k:
                kids.append(k)
        mine = sorted(own.get(path, []), key=topo.__getitem__)
        if len(mine) > BUNDLE_OWN_OPS_OVER and any(_is_container(c) for c in children_paths):
            bid = f"x:{path}"
            nodes[bid] = DNode(bid, "bundle", f"{_leaf_name(path) or 'model'} ops ({len(mine)})", nid,
                               topo[mine[0]], module=path, module_class=node.module_class, op_names=mine,
                               layer=layer_of(path))
            nodes[bid].children = [op_node(o, bid) for o in mine]
            kids.append(bid)
        else:
            kids.extend(op_node(o, nid) for o in mine)
        node.children = sorted(kids, key=lambda k: nodes[k].order)
        return nid

    root = make("", None) or "m:"

    def fill_chain(nid: str, prefix: list[str]) -> None:
        n = nodes[nid]
        here = prefix + [nid] if nid != root else prefix
        if not n.children:
            for o in n.op_names:
                chain[o] = here
        for c in n.children:
            fill_chain(c, here)

    fill_chain(root, [])

    # open the containers down to the chain of numbered blocks: root, model, model.layers (not the blocks)
    initial = [root]
    frontier = [root]
    while frontier:
        nxt = []
        for nid in frontier:
            for c in nodes[nid].children:
                cn = nodes[c]
                has_sub_modules = any(nodes[k].kind == "module" for k in cn.children)
                if cn.kind == "module" and has_sub_modules and not _NUMERIC.match(_leaf_name(cn.module)):
                    initial.append(c)
                    nxt.append(c)
        frontier = nxt
    return Hierarchy(nodes, root, chain, initial, topo)


# ------------------------------------------------------------------------------------------ frontier
def visible(h: Hierarchy, expanded: set[str]) -> list[str]:
    """Display ids currently drawn, in topological order."""
    out: list[str] = []

    def rec(nid: str) -> None:
        n = h.nodes[nid]
        if nid in expanded and n.children:
            for c in n.children:
                rec(c)
        else:
            out.append(nid)

    rec(h.root)
    return out


def visible_of(h: Hierarchy, op: str, expanded: set[str]) -> str | None:
    """The visible display node that contains graph node ``op``."""
    for nid in h.chain.get(op, ()):
        if nid not in expanded or not h.nodes[nid].children:
            return nid
    return None


def ancestors(h: Hierarchy, nid: str) -> list[str]:
    out = []
    p = h.nodes[nid].parent
    while p is not None:
        out.append(p)
        p = h.nodes[p].parent
    return out[::-1]


def descendants(h: Hierarchy, nid: str) -> list[str]:
    out: list[str] = []
    stack = list(h.nodes[nid].children)
    while stack:
        c = stack.pop()
        out.append(c)
        stack.extend(h.nodes[c].children)
    return out


def expand(h: Hierarchy, expanded: list[str], nid: str, cap: int, deep: bool = False) -> list[str]:
    """Expand ``nid`` (and its ancestors; with ``deep``, all its descendants down to ops), then collapse
    the oldest user expansions until at most ``cap`` nodes are visible. Returns the new ordered list."""
    if nid not in h.nodes or not h.nodes[nid].children:
        return list(expanded)
    new = [e for e in expanded]
    adds = [a for a in ancestors(h, nid) if a not in new] + [nid]
    if deep:
        adds += [d for d in descendants(h, nid) if h.nodes[d].children]
    for a in adds:
        if a in new:
            new.remove(a)
        new.append(a)
    protected = set(h.initial_expanded) | set(adds) | set(ancestors(h, nid))
    while len(visible(h, set(new))) > cap:
        victim = next((e for e in new if e not in protected), None)
        if victim is None:
            break
        new = collapse(h, new, victim)
    return new


def collapse(h: Hierarchy, expanded: list[str], nid: str) -> list[str]:
    """Collapse ``nid`` and everything expanded below it."""
    gone = {nid, *descendants(h, nid)}
    return [e for e in expanded if e not in gone]


def collapsed_edges(h: Hierarchy, graph: nx.MultiDiGraph, expanded: set[str]) -> dict[tuple[str, str], int]:
    """Edges between visible nodes (op edges mapped to their visible ends), with multiplicity."""
    vis_cache: dict[str, str | None] = {}
    out: dict[tuple[str, str], int] = {}
    for u, v in graph.edges():
        a = vis_cache.get(u) if u in vis_cache else vis_cache.setdefault(u, visible_of(h, u, expanded))
        b = vis_cache.get(v) if v in vis_cache else vis_cache.setdefault(v, visible_of(h, v, expanded))
        if a and b and a != b:
            out[(a, b)] = out.get((a, b), 0) + 1
    return out
