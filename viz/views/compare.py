"""Compare dense, pruned and recovered models: parameters, perplexity per source, latency — from Evaluate
jobs — and per-layer surviving heads/channels from the export sidecar of each evaluated model folder.

Only measured numbers are shown: rows come from succeeded Evaluate jobs in the registry; a model folder
without an export sidecar (``lorashear.json``) is a dense model, one with it was written by ``save_pruned``.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import plotly.graph_objects as go
from dash import Input, Output, dcc, html, no_update

from ..components import card, human, table, unavailable
from ..session import AppState

def _sidecar(model_dir: str) -> dict | None:
    from lorashear.errors import LorashearError
    from lorashear.export import read_sidecar

    try:
        return read_sidecar(model_dir) if model_dir else None
    except (LorashearError, OSError):
        return None


def eval_rows(state: AppState) -> list[dict]:
    """One entry per succeeded Evaluate job, newest first."""
    out = []
    for j in state.registry.list(kind="eval", status="succeeded"):
        r = j.result or {}
        side = _sidecar(j.params.get("model", ""))
        prov = (side or {}).get("provenance") or {}
        shown = {k: v for k, v in prov.items() if not isinstance(v, (dict, list))}  # settings live in the run report
        role = "dense" if side is None else "pruned" + (f" ({', '.join(f'{k}={v}' for k, v in shown.items())})"
                                                        if shown else "")
        out.append({"job": j.id, "model": j.params.get("model", ""), "role": role, "report": r, "sidecar": side})
    return out


def _ppl_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    for e in rows:
        ppl = [p for p in e["report"].get("perplexity", [])]
        xs = [f"{p['source']} ({p['protocol']})" for p in ppl]
        fig.add_bar(name=f"job {e['job']} · {e['role']} · {Path(e['model']).name}", x=xs, y=[p["ppl"] for p in ppl])
    fig.update_layout(barmode="group", height=320, margin=dict(l=50, r=10, t=10, b=60), template="plotly_white",
                      yaxis_title="perplexity", legend=dict(orientation="h", y=1.15))
    return fig


def _layers_figure(rows: list[dict]) -> go.Figure | None:
    fig = go.Figure()
    for e in rows:
        sizes = (e["sidecar"] or {}).get("layer_sizes") or {}
        layers = sorted((k for k in sizes if k.isdigit()), key=int)
        for kind in ("attention", "mlp"):
            ys = [sizes[k].get(kind) for k in layers]
            if any(y is not None for y in ys):
                fig.add_bar(name=f"job {e['job']} {kind}", x=[f"L{k}" for k in layers], y=ys)
    if not fig.data:
        return None
    fig.update_layout(barmode="group", height=300, margin=dict(l=50, r=10, t=10, b=40), template="plotly_white",
                      yaxis_title="units kept (heads / channels)")
    return fig


def content(state: AppState) -> list:
    if importlib.util.find_spec("lorashear.evaluate") is None:
        return [unavailable("evaluation (lorashear.evaluate) has not landed, so there are no Evaluate jobs.",
                            id="compare-unavailable")]
    rows = eval_rows(state)
    if not rows:
        return [unavailable("no finished Evaluate job yet — run one per model (dense, pruned, recovered) in the "
                            "Jobs tab; its numbers appear here.", id="compare-unavailable")]
    head = ["job", "model", "role", "parameters", "latency (ms)", "tokens/s"]
    protos = sorted({(p["source"], p["protocol"]) for e in rows for p in e["report"].get("perplexity", [])})
    head += [f"ppl {s} ({p})" for s, p in protos]
    body = []
    for e in rows:
        cost = e["report"].get("cost") or {}
        ppl = {(p["source"], p["protocol"]): p["ppl"] for p in e["report"].get("perplexity", [])}
        body.append([e["job"], e["model"], e["role"],
                     human(cost.get("parameters")) if cost else (human(e["sidecar"]["n_params"]) if e["sidecar"] else "—"),
                     f"{cost['latency_ms']:.1f}" if cost else "—",
                     f"{cost['throughput_tokens_per_s']:,.0f}" if cost else "—",
                     *[f"{ppl[k]:.2f}" if k in ppl else "—" for k in protos]])
    out = [table(head, body), dcc.Graph(figure=_ppl_figure(rows), config={"displaylogo": False})]
    layers = _layers_figure(rows)
    out.append(html.H4("Per-layer surviving heads / channels"))
    out.append(dcc.Graph(figure=layers, config={"displaylogo": False}) if layers else html.P(
        "No evaluated model has an export sidecar yet (pruned models written by save_pruned carry one).",
        className="muted"))
    return out


def layout(state: AppState) -> html.Div:
    return html.Div([card("Dense vs pruned vs recovered", html.Div(content(state), id="compare-content"))],
                    id="compare-view")


def register(app, state: AppState) -> None:
    @app.callback(Output("compare-content", "children"), Input("tabs", "value"), prevent_initial_call=True)
    def refresh(tab):
        return content(state) if tab == "compare" else no_update
