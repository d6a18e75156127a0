"""Model overview: what the model is, where its parameters are, what can be pruned and why not."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import plotly.graph_objects as go
from dash import dcc, html

from ..components import LEGEND_MARGIN_R, LEGEND_RIGHT, card, human, kv_table, table
from ..model_view import ModelView

KIND_COLOURS = {"attention": "#4a6fa5", "mlp": "#2f8f5b", "not in a per-layer group": "#b0b8c4"}


def params_figure(mv: ModelView) -> go.Figure:
    """Stacked bars: parameters per block by the group kind they belong to; one bar for everything outside
    the blocks (embeddings, final norm, lm_head)."""
    per = mv.layer_params()
    layers = sorted(k for k in per if k is not None)
    xs = [f"L{i}" for i in layers] + (["outside blocks"] if None in per else [])
    keys = layers + ([None] if None in per else [])
    fig = go.Figure()
    for what, colour in KIND_COLOURS.items():
        ys = [per[k].get(what, 0) for k in keys]
        if any(ys):
            fig.add_bar(name=what, x=xs, y=ys, marker_color=colour,
                        hovertemplate="%{x}: %{y:,} params<extra>" + what + "</extra>")
    fig.update_layout(barmode="stack", height=320, margin=dict(l=50, r=LEGEND_MARGIN_R, t=30, b=40),
                      legend=LEGEND_RIGHT, yaxis_title="parameters",
                      template="plotly_white")
    return fig


def kinds_table(mv: ModelView) -> html.Table:
    by_kind: dict[str, list] = defaultdict(list)
    for g in mv.groups:
        by_kind[g.kind].append(g)
    rows = []
    for kind, gs in sorted(by_kind.items(), key=lambda kv: -sum(g.n_units * g.params_per_unit for g in kv[1])):
        ppu = sorted({g.params_per_unit for g in gs})
        rows.append([kind, len(gs), sum(g.prunable for g in gs), f"{sum(g.n_units for g in gs):,}",
                     human(ppu[0]) if len(ppu) == 1 else f"{human(ppu[0])}–{human(ppu[-1])}",
                     human(sum(g.n_units * g.params_per_unit for g in gs))])
    return table(["kind", "groups", "prunable", "units", "params / unit", "params in units"], rows)


# A refusal clause (``Group.reason`` joins them with "; ") -> what it means, in a user's words. First match wins; the
# clauses name nodes and modules, which a user needs only behind the disclosure.
PLAIN_REASONS: tuple[tuple[str, str], ...] = (
    ("LoRA rank axis", "LoRA rank: inside the adapter, never pruned"),
    ("broadcast copies by ", "GQA: a query head shares its key/value head; remove the kv head with its queries instead"),
    ("query heads share a kv head", "GQA: a query head shares its key/value head; remove the kv head with its queries "
                                    "instead"),
    ("per-head dimension", "per-head size: attention reshapes q/k/v with one fixed head size; remove whole heads "
                           "instead"),
    ("rows are looked up by id", "vocabulary: token ids index the embedding rows, so an entry is no removable unit"),
    ("is an axis of the model output", "an axis of the model's output (the logits): removing it changes what the "
                                       "model returns"),
    ("fixed-size buffer", "a fixed-size buffer (e.g. rotary frequencies) has this size"),
    ("size fixed by ", "an op creates a tensor of this fixed size"),
    ("split by ", "a reshape splits this axis with one fixed factor, which compress cannot rewrite"),
    ("concatenat", "concatenated with other tensors (e.g. the rotary halves): its positions are not independent units"),
    ("indices selected by ", "sliced by position (e.g. the rotary halves): its positions are not independent units"),
    ("split into unequal parts", "split into unequal parts: its positions are not independent units"),
    ("one index picked by ", "one position is picked out by an op: its positions are not interchangeable units"),
    ("mixed along the axis by ", "an op mixes values along this axis (e.g. softmax): units are not independent"),
    ("irregular ", "an op treats this axis irregularly"),
    ("reaches the attention scores", "zeroing a unit still changes the attention scores, so removal is not exact"),
    ("reaches ", "zeroing a unit still changes a later op's result, so removal is not exact"),
    ("reduced by ", "summed or averaged over: zeroing a unit changes the result, so removal is not exact"),
    ("averaged by mean", "a normalisation averages over this axis and cannot be compensated exactly"),
    ("RMS ", "an RMS norm over this axis cannot be compensated exactly"),
    ("norm weight", "an RMS norm over this axis cannot be compensated exactly"),
    ("not a structure compress can rebuild", "not a structure compress can rebuild (it rebuilds attention heads, MLP "
                                             "channels and the hidden dimension)"),
    ("no parameter produces it", "no weight produces it, so there is nothing to zero"),
    ("unsupported op", "an op the group finder does not understand touches it"),
    ("inconsistent shapes", "an op with shapes the group finder could not follow touches it"),
)


def plain_reason(clause: str) -> tuple[int, str]:
    """One refusal clause in a user's words, with its rank (the order of ``PLAIN_REASONS``: the most telling reason
    first); a clause that is not a known one is itself, node names and all, ranked last."""
    for rank, (prefix, words) in enumerate(PLAIN_REASONS):
        if clause.startswith(prefix) or (len(prefix) > 12 and prefix in clause):
            return rank, words
    return len(PLAIN_REASONS), clause


def reason_summary(groups: list) -> list[dict]:
    """The unprunable groups grouped by kind and main reason (the most telling of its clauses, in plain words): one
    entry per (kind, main reason) with the count, the group ids, the other reasons and the exact clauses (node
    names), most frequent first. Reasons that differ only by the node they name are one entry — on a 70B model 80
    bullets are no explanation."""
    entries: dict[tuple[str, str], dict] = {}
    for g in groups:
        if g.prunable:
            continue
        clauses = [c.strip() for c in (g.reason or "(no reason given)").split("; ") if c.strip()]
        plain = [w for _, w in sorted(dict.fromkeys(plain_reason(c) for c in clauses))]
        e = entries.setdefault((g.kind, plain[0]), {"kind": g.kind, "reason": plain[0], "also": {}, "groups": [],
                                                    "clauses": {}})
        e["groups"].append(g.id)
        e["also"].update(dict.fromkeys(plain[1:]))
        e["clauses"].update(dict.fromkeys(clauses))
    out = [{**e, "also": list(e["also"]), "clauses": list(e["clauses"])} for e in entries.values()]
    return sorted(out, key=lambda e: (-len(e["groups"]), e["kind"], e["reason"]))


def reasons_list(mv: ModelView) -> html.Div:
    summary = reason_summary(mv.groups)
    if not summary:
        return html.P("Every group is prunable.", className="muted")
    items = []
    for e in summary:
        n = len(e["groups"])
        items.append(html.Li([
            html.Strong(f"{n} {e['kind']} group{'s' if n > 1 else ''}: "), e["reason"] + ".",
            html.Details([html.Summary("which groups and where", className="muted"),
                          html.Div("also: " + "; ".join(e["also"]) + ".") if e["also"] else None,
                          html.Div("groups: " + ", ".join(e["groups"]), className="muted"),
                          html.Ul([html.Li(c) for c in e["clauses"]], className="reason-clauses")],
                         className="reason-details"),
        ]))
    return html.Ul(items, className="reasons", id="overview-reasons")


def summary(mv: ModelView) -> html.Table:
    cfg = mv.opgraph.config or {}
    rows = [
        ("model", mv.opgraph.model_class),
        ("source", mv.source + ("  (meta: structure only)" if mv.meta else "")),
        ("parameters", f"{mv.n_params:,} ({human(mv.n_params)})"),
        ("graph", f"{mv.graph.number_of_nodes():,} op nodes, {mv.graph.number_of_edges():,} edges"),
        ("groups", f"{len(mv.groups)} ({sum(g.prunable for g in mv.groups)} prunable)"),
    ]
    sizes = mv.layer_sizes()
    real = {"hidden_size": [mv.hidden_size()] if mv.hidden_size() is not None else [],
            "num_attention_heads": [r["heads"] for r in sizes if r["heads"] is not None],
            "num_key_value_heads": [r["kv_heads"] for r in sizes if r["kv_heads"] is not None],
            "intermediate_size": [r["mlp"] for r in sizes if r["mlp"] is not None]}
    for key, label in (("num_hidden_layers", "layers"), ("hidden_size", "hidden size"),
                       ("num_attention_heads", "attention heads"), ("num_key_value_heads", "kv heads"),
                       ("head_dim", "head dim"), ("intermediate_size", "MLP size"), ("vocab_size", "vocab"),
                       ("tie_word_embeddings", "tied embeddings")):
        text = size_text(real.get(key) or [], cfg.get(key))
        if text is not None:
            rows.append((label, html.Span(text, id=f"overview-size-{key}")))
    return kv_table(rows)


def size_text(values: list[int], config: Any) -> str | None:
    """A size as the model has it, not as its config says: one number when every layer agrees with the config;
    the real number (and the config's) when they differ; "min–max per layer" when layers differ (a pruned
    model). Why: a pruned model keeps its dense config, so "MLP size 640" would be false for every layer."""
    if not values:
        return None if config is None else str(config)
    lo, hi = min(values), max(values)
    if lo == hi:
        return str(lo) if config in (None, lo) else f"{lo} (config says {config})"
    return f"{lo}–{hi} per layer" + (f" (config says {config})" if config is not None else "")


def sizes_table(mv: ModelView) -> html.Details | None:
    """Every block's real widths (heads, kv heads, MLP channels), open when the layers differ."""
    sizes = mv.layer_sizes()
    if not sizes:
        return None
    varies = any(len({r[k] for r in sizes}) > 1 for k in ("heads", "kv_heads", "mlp"))
    dash = lambda v: "—" if v is None else f"{v:,}"  # noqa: E731
    return html.Details([html.Summary("Sizes per layer (from the model's modules)"),
                         table(["layer", "heads", "kv heads", "MLP channels"],
                               [[r["layer"], dash(r["heads"]), dash(r["kv_heads"]), dash(r["mlp"])] for r in sizes],
                               className="data compact")],
                        open=varies, id="overview-sizes")


def layout(mv: ModelView | None, error: str | None) -> html.Div:
    if mv is None:
        return html.Div(card("No model loaded", html.P(error or "no model"), html.P(
            "Start the app with --model DIR (a Hugging Face model directory) or --config FILE --meta "
            "(structure only), or run a Graph job in the Jobs tab and press 'Browse this model'.")),
            id="overview")
    return html.Div([
        html.Div([card("Model", summary(mv), sizes_table(mv), className="narrow"),
                  card("Groups by kind", kinds_table(mv), html.H4("Why some groups are not prunable"),
                       reasons_list(mv), className="wide")], className="row"),
        card("Parameters per layer, by group kind",
             dcc.Graph(id="overview-params", figure=params_figure(mv), config={"displaylogo": False})),
    ], id="overview")
