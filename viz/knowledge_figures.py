"""Plotly figures of a knowledge report: where the model's knowledge lives.

Four views, each a plain ``go.Figure`` built from a ``KnowledgeReport`` (the app embeds them; the CLI
exports them with ``write_figures``):

* ``head_heatmap``     — layer × attention unit (a kv head with its query heads under GQA);
* ``channel_heatmap``  — layer × MLP channel bin (channels summed in equal bins);
* ``layer_bars``       — per-layer total, stacked by kind, network-wide groups (hidden) as their own bar;
* ``score_distribution`` — histogram of unit scores per group kind.

Units marked unprunable are outlined (heatmaps) so the γ selection is visible next to the scores.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

if TYPE_CHECKING:  # the library never imports viz; viz reads library objects
    from lorashear.knowledge import KnowledgeReport

FIGURES = ("heads", "channels", "layers", "distribution")
_LEGEND = dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom")
_KIND_COLOURS = {"attention": "#4C78A8", "mlp": "#F58518", "hidden": "#54A24B"}


def _title(report: "KnowledgeReport", what: str) -> str:
    model = report.meta.get("model", {}) or {}
    return f"{what} — {report.meta.get('estimator', '?')} on {model.get('class', 'model')}"


def _layer_matrix(units: pd.DataFrame, value: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    layers = sorted(int(x) for x in units["layer"].dropna().unique())
    width = int(units["unit"].max()) + 1 if len(units) else 0
    z = np.full((len(layers), width), np.nan)
    flag = np.zeros((len(layers), width), dtype=bool)
    row = {l: i for i, l in enumerate(layers)}
    for l, u, v, f in zip(units["layer"], units["unit"], units[value], units["unprunable"]):
        z[row[int(l)], int(u)] = v
        flag[row[int(l)], int(u)] = bool(f)
    return layers, z, flag


def _empty(title: str, text: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(title=title, xaxis_visible=False, yaxis_visible=False)
    return fig


def _outline(fig: go.Figure, flag: np.ndarray, layers: list[int], x_of=lambda j: j) -> None:
    ys, xs = np.nonzero(flag)
    if len(xs):
        fig.add_trace(go.Scatter(x=[x_of(j) for j in xs], y=[layers[i] for i in ys], mode="markers", name="unprunable",
                                 marker=dict(symbol="square-open", size=14, color="black", line=dict(width=2)),
                                 hoverinfo="skip"))


def head_heatmap(report: "KnowledgeReport", value: str = "score") -> go.Figure:
    """Layer × attention unit heatmap of ``value`` (``score`` or ``density``)."""
    units = report.units[(report.units["kind"] == "attention") & report.units["layer"].notna()]
    title = _title(report, "Attention heads")
    if units.empty:
        return _empty(title, "no attention groups in this report")
    layers, z, flag = _layer_matrix(units, value)
    fig = go.Figure(go.Heatmap(z=z, x=list(range(z.shape[1])), y=layers, colorscale="Viridis", colorbar=dict(title=value),
                               hovertemplate="layer %{y}, head unit %{x}<br>" + value + " %{z:.4g}<extra></extra>"))
    _outline(fig, flag, layers)
    fig.update_layout(title=title, xaxis_title="head unit (kv head with its query heads)", yaxis_title="layer",
                      yaxis=dict(autorange="reversed", dtick=1), xaxis=dict(dtick=1), showlegend=bool(flag.any()),
                      legend=_LEGEND)
    return fig


def channel_heatmap(report: "KnowledgeReport", bins: int = 32, value: str = "score") -> go.Figure:
    """Layer × MLP channel-bin heatmap: channels summed in ``bins`` equal contiguous bins per layer."""
    units = report.units[(report.units["kind"] == "mlp") & report.units["layer"].notna()]
    title = _title(report, "MLP channels")
    if units.empty:
        return _empty(title, "no MLP groups in this report")
    n = int(units["unit"].max()) + 1
    bins = max(1, min(int(bins), n))
    size = -(-n // bins)
    u = units.assign(bin=units["unit"] // size)
    agg = u.groupby(["layer", "bin"]).agg(v=(value, "sum"), f=("unprunable", "mean")).reset_index()
    agg = agg.rename(columns={"bin": "unit", "v": value})
    agg["unprunable"] = agg["f"] >= 0.5
    layers, z, flag = _layer_matrix(agg, value)
    starts = [b * size for b in range(z.shape[1])]
    ranges = [[f"channels {a}–{min(a + size, n) - 1}"] * len(layers) for a in starts]
    fig = go.Figure(go.Heatmap(z=z, x=starts, y=layers, colorscale="Viridis", colorbar=dict(title=f"{value} (sum)"),
                               customdata=np.array(ranges).T,
                               hovertemplate="layer %{y}, %{customdata}<br>" + value + " %{z:.4g}<extra></extra>"))
    _outline(fig, flag, layers, x_of=lambda j: starts[j])
    fig.update_layout(title=title, xaxis_title=f"first channel of the bin ({size} channels per bin; outlined: most of the bin unprunable)",
                      yaxis_title="layer", yaxis=dict(autorange="reversed", dtick=1), showlegend=bool(flag.any()),
                      legend=_LEGEND)
    return fig


def layer_bars(report: "KnowledgeReport") -> go.Figure:
    """Per-layer total score, stacked by kind; groups spanning the network (hidden) get one bar of their own."""
    u = report.units
    fig = go.Figure()
    layered = u[u["layer"].notna()]
    x_all: list[str] = []
    for kind in [k for k in ("attention", "mlp") if k in set(layered["kind"])] + sorted(set(layered["kind"]) - {"attention", "mlp"}):
        s = layered[layered["kind"] == kind].groupby("layer")["score"].sum()
        xs = [f"layer {int(l)}" for l in s.index]
        x_all += [x for x in xs if x not in x_all]
        fig.add_trace(go.Bar(x=xs, y=s.to_numpy(), name=kind, marker_color=_KIND_COLOURS.get(kind)))
    for gid, rows in u[u["layer"].isna()].groupby("group", sort=False):
        kind = rows["kind"].iloc[0]
        fig.add_trace(go.Bar(x=[f"{gid}"], y=[rows["score"].sum()], name=f"{kind} (whole network)",
                             marker_color=_KIND_COLOURS.get(kind)))
    fig.update_layout(barmode="relative", title=_title(report, "Knowledge per layer"), yaxis_title="sum of unit scores",
                      legend=_LEGEND)
    return fig


def score_distribution(report: "KnowledgeReport", nbins: int = 50) -> go.Figure:
    """Histogram of unit scores, one panel per group kind (scales differ between kinds)."""
    u = report.units
    kinds = list(dict.fromkeys(u["kind"]))
    if not kinds:
        return _empty(_title(report, "Unit scores"), "empty report")
    fig = make_subplots(rows=len(kinds), cols=1, subplot_titles=[f"{k} ({int((u['kind'] == k).sum())} units)" for k in kinds])
    for i, k in enumerate(kinds, start=1):
        s = u.loc[u["kind"] == k, "score"].dropna()
        fig.add_trace(go.Histogram(x=s, nbinsx=nbins, name=k, marker_color=_KIND_COLOURS.get(k), showlegend=False), row=i, col=1)
        fig.update_yaxes(title_text="units", row=i, col=1)
    fig.update_xaxes(title_text="unit score", row=len(kinds), col=1)
    fig.update_layout(title=_title(report, "Distribution of unit scores"), height=260 * len(kinds) + 80)
    return fig


def figures(report: "KnowledgeReport") -> dict[str, go.Figure]:
    """Every figure, by name (``FIGURES``)."""
    return {"heads": head_heatmap(report), "channels": channel_heatmap(report), "layers": layer_bars(report),
            "distribution": score_distribution(report)}


def write_figures(report: "KnowledgeReport", out_dir: str | Path, formats: tuple[str, ...] = ("html", "png")) -> tuple[list[Path], list[str]]:
    """Write every figure as ``knowledge_<name>.<fmt>`` into ``out_dir``; returns (paths, warnings).

    PNG needs kaleido and a Chrome/Chromium it can drive; when that fails the HTML is still written and the
    reason is returned as a warning instead of raising (the figures are a by-product of the analysis)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = figures(report)
    paths: list[Path] = []
    warnings: list[str] = []
    html = "html" in formats
    if "png" in formats:
        try:
            for name, fig in figs.items():
                p = out / f"knowledge_{name}.png"
                fig.write_image(p, width=1000, height=max(500, int(fig.layout.height or 500)))
                paths.append(p)
        except Exception as exc:  # kaleido missing, or no browser it can start
            html = True
            first = str(exc).splitlines()[0] if str(exc) else ""
            warnings.append(f"PNG export unavailable ({type(exc).__name__}: {first}); wrote HTML instead")
    if html:
        for name, fig in figs.items():
            p = out / f"knowledge_{name}.html"
            fig.write_html(p, include_plotlyjs=True)
            paths.append(p)
    return paths, warnings
