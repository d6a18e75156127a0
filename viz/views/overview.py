"""Model overview: what the model is, where its parameters are, what can be pruned and why not."""
from __future__ import annotations

from collections import Counter, defaultdict

import plotly.graph_objects as go
from dash import dcc, html

from ..components import card, human, kv_table, table
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
    fig.update_layout(barmode="stack", height=320, margin=dict(l=50, r=10, t=10, b=40),
                      legend=dict(orientation="h", y=1.12), yaxis_title="parameters",
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


def reasons_list(mv: ModelView) -> html.Div:
    reasons = Counter(g.reason or "(no reason given)" for g in mv.groups if not g.prunable)
    if not reasons:
        return html.P("Every group is prunable.", className="muted")
    examples = defaultdict(list)
    for g in mv.groups:
        if not g.prunable:
            examples[g.reason or "(no reason given)"].append(g.id)
    return html.Ul([
        html.Li([html.Strong(f"{n} group{'s' if n > 1 else ''}: "), r,
                 html.Span(f"  e.g. {', '.join(examples[r][:3])}", className="muted")])
        for r, n in reasons.most_common()
    ], className="reasons")


def summary(mv: ModelView) -> html.Table:
    cfg = mv.opgraph.config or {}
    rows = [
        ("model", mv.opgraph.model_class),
        ("source", mv.source + ("  (meta: structure only)" if mv.meta else "")),
        ("parameters", f"{mv.n_params:,} ({human(mv.n_params)})"),
        ("graph", f"{mv.graph.number_of_nodes():,} op nodes, {mv.graph.number_of_edges():,} edges"),
        ("groups", f"{len(mv.groups)} ({sum(g.prunable for g in mv.groups)} prunable)"),
    ]
    for key, label in (("num_hidden_layers", "layers"), ("hidden_size", "hidden size"),
                       ("num_attention_heads", "attention heads"), ("num_key_value_heads", "kv heads"),
                       ("head_dim", "head dim"), ("intermediate_size", "MLP size"), ("vocab_size", "vocab"),
                       ("tie_word_embeddings", "tied embeddings")):
        if cfg.get(key) is not None:
            rows.append((label, str(cfg[key])))
    return kv_table(rows)


def layout(mv: ModelView | None, error: str | None) -> html.Div:
    if mv is None:
        return html.Div(card("No model loaded", html.P(error or "no model"), html.P(
            "Start the app with --model DIR (a Hugging Face model directory) or --config FILE --meta "
            "(structure only), or run a Graph job in the Jobs tab and press 'Browse this model'.")),
            id="overview")
    return html.Div([
        html.Div([card("Model", summary(mv), className="narrow"),
                  card("Groups by kind", kinds_table(mv), html.H4("Why some groups are not prunable"),
                       reasons_list(mv), className="wide")], className="row"),
        card("Parameters per layer, by group kind",
             dcc.Graph(id="overview-params", figure=params_figure(mv), config={"displaylogo": False})),
    ], id="overview")
