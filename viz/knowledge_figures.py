"""Plotly figures of a knowledge report: where the model's knowledge lives.

Five views, each a plain ``go.Figure`` built from a ``KnowledgeReport`` (the app embeds them; the CLI
exports them with ``write_figures``):

* ``head_heatmap``     — layer × attention unit (a kv head with its query heads under GQA);
* ``query_head_heatmap`` — layer × GQA query-head unit (the i-th query head of every kv group), scored apart;
* ``channel_heatmap``  — layer × MLP channel bin (channels summed in equal bins);
* ``layer_bars``       — per-layer total, stacked by kind, network-wide groups (hidden) in a panel of their own;
* ``score_distribution`` — histogram of unit scores per group kind.

Units marked unprunable are outlined (heatmaps) so the γ selection is visible next to the scores; units a
pruning plan would remove (``planned``: group id -> units) are outlined in red.

Colour scales: a few cells (typically layer 0, or the last layer) can hold scores orders of magnitude above
the rest, which flattens a linear scale to one colour. ``scale="log"`` (the default) colours log10 of the
value; ``"clipped"`` is linear between the 2nd and 98th percentile; ``"linear"`` is the plain range. Each
heatmap has its own scale (kinds are in different units) and says which in its colour bar and title; the
hover always shows the real value.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lorashear.knowledge.estimators import OVERLAP_KINDS

if TYPE_CHECKING:  # the library never imports viz; viz reads library objects
    from lorashear.knowledge import KnowledgeReport

FIGURES = ("heads", "query_heads", "channels", "layers", "distribution")
SCALES = ("log", "clipped", "linear")
_LEGEND = dict(orientation="h", x=1, xanchor="right", y=1.02, yanchor="bottom")
_KIND_COLOURS = {"attention": "#4C78A8", "query_heads": "#72B7B2", "mlp": "#F58518", "hidden": "#54A24B"}


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


def _outline(fig: go.Figure, flag: np.ndarray, layers: list[int], x_of=lambda j: j, name: str = "unprunable",
             color: str = "black", size: int = 14) -> None:
    ys, xs = np.nonzero(flag)
    if len(xs):
        fig.add_trace(go.Scatter(x=[x_of(j) for j in xs], y=[layers[i] for i in ys], mode="markers", name=name,
                                 marker=dict(symbol="square-open", size=size, color=color, line=dict(width=2)),
                                 hoverinfo="skip"))


def colour_values(z: np.ndarray, scale: str) -> tuple[np.ndarray, dict, str]:
    """(colour values, extra Heatmap arguments, label) for ``z`` on ``scale`` (``SCALES``).

    ``log``: log10 of the value; cells ≤ 0 (ablation deltas can be negative) are drawn at the smallest positive
    value and the label says so. ``clipped``: linear between the 2nd and 98th percentile. ``linear``: as is."""
    if scale not in SCALES:
        raise ValueError(f"unknown colour scale {scale!r}; choose one of {', '.join(SCALES)}")
    finite = z[np.isfinite(z)]
    if scale == "linear" or finite.size == 0:
        return z, {}, "linear"
    if scale == "clipped":
        lo, hi = np.percentile(finite, [2, 98])
        if hi <= lo:
            return z, {}, "linear"
        return z, {"zmin": float(lo), "zmax": float(hi)}, "linear, clipped to p2–p98"
    pos = finite[finite > 0]
    if pos.size == 0:
        return z, {}, "linear (no positive value for a log scale)"
    floor = float(pos.min())
    c = np.where(np.isfinite(z), np.log10(np.maximum(np.nan_to_num(z, nan=floor), floor)), np.nan)
    lo, hi = int(np.floor(np.log10(floor))), int(np.ceil(np.log10(float(pos.max()))))
    ticks = list(range(lo, hi + 1)) if hi > lo else [lo]
    extra = {"colorbar_tickvals": ticks, "colorbar_ticktext": [f"1e{t}" for t in ticks]}
    label = "log10" + (" (≤0 drawn at the minimum)" if (finite <= 0).any() else "")
    return c, extra, label


def _planned_flags(units: pd.DataFrame, planned: dict | None, layers: list[int], width: int) -> np.ndarray:
    """Layer × unit flags of the units a plan removes (``planned``: group id -> unit indices)."""
    flag = np.zeros((len(layers), width), dtype=bool)
    if not planned:
        return flag
    row = {l: i for i, l in enumerate(layers)}
    layer_of = {str(g): int(l) for g, l in zip(units["group"], units["layer"]) if pd.notna(l)}
    for gid, us in planned.items():
        if gid in layer_of and layer_of[gid] in row:
            for u in us:
                if 0 <= int(u) < width:
                    flag[row[layer_of[gid]], int(u)] = True
    return flag


def _unit_heatmap(report: "KnowledgeReport", kind: str, what: str, xtitle: str, value: str, scale: str,
                  planned: dict | None, empty_text: str) -> go.Figure:
    units = report.units[(report.units["kind"] == kind) & report.units["layer"].notna()]
    title = _title(report, what)
    if units.empty:
        return _empty(title, empty_text)
    layers, z, flag = _layer_matrix(units, value)
    c, extra, label = colour_values(z, scale)
    fig = go.Figure(go.Heatmap(z=c, x=list(range(z.shape[1])), y=layers, colorscale="Viridis", customdata=z,
                               colorbar=dict(title=f"{value} ({label})"), **extra,
                               hovertemplate="layer %{y}, unit %{x}<br>" + value + " %{customdata:.4g}<extra></extra>"))
    _outline(fig, flag, layers)
    plan = _planned_flags(units, planned, layers, z.shape[1])
    _outline(fig, plan, layers, name="planned removal", color="red", size=20)
    fig.update_layout(title=f"{title} · {label} colour scale", xaxis_title=xtitle, yaxis_title="layer",
                      yaxis=dict(autorange="reversed", dtick=1 if len(layers) <= 32 else None), xaxis=dict(dtick=1),
                      showlegend=bool(flag.any() or plan.any()), legend=_LEGEND)
    return fig


def head_heatmap(report: "KnowledgeReport", value: str = "score", scale: str = "log",
                 planned: dict | None = None) -> go.Figure:
    """Layer × attention unit heatmap of ``value`` (``score`` or ``density``); x is the unit index, so a
    clicked cell names its unit."""
    return _unit_heatmap(report, "attention", "Attention heads", "head unit (kv head with its query heads)", value,
                         scale, planned, "no attention groups in this report")


def query_head_heatmap(report: "KnowledgeReport", value: str = "score", scale: str = "log",
                       planned: dict | None = None) -> go.Figure:
    """Layer × GQA query-head unit heatmap. A unit is the i-th query head of every kv group; it overlaps the
    attention units, so its scores are never in the totals — this map is beside the kv-head one, not added."""
    why = ((report.meta.get("notes") or {}).get("unscored_kinds") or {}).get("query_heads")
    empty = (f"{report.meta.get('estimator')} does not score query heads: {why}" if why
             else "no GQA query-head groups in this report (the model has as many kv heads as query heads)")
    fig = _unit_heatmap(report, "query_heads", "GQA query heads (scored apart)",
                        "query-head unit i (the i-th query head of every kv group)", value, scale, planned, empty)
    if why:
        fig.layout.annotations[0].text = "<br>".join(_wrap(empty, 70))
    return fig


def _wrap(text: str, width: int) -> list[str]:
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return out + ([line] if line else [])


def channel_heatmap(report: "KnowledgeReport", bins: int = 32, value: str = "score", scale: str = "log",
                    planned: dict | None = None) -> go.Figure:
    """Layer × MLP channel-bin heatmap: channels summed in ``bins`` equal contiguous bins per layer; x is the
    bin's first channel. A bin is outlined red when the plan removes at least one of its channels."""
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
    c, extra, label = colour_values(z, scale)
    text = np.array([[f"channels {a}–{min(a + size, n) - 1}" for a in starts] for _ in layers])
    vals = np.vectorize(lambda v: "nan" if not np.isfinite(v) else f"{v:.4g}")(z) if z.size else z
    fig = go.Figure(go.Heatmap(z=c, x=starts, y=layers, colorscale="Viridis", colorbar=dict(title=f"{value} sum ({label})"),
                               customdata=np.dstack([text, vals]) if z.size else None, **extra,
                               hovertemplate="layer %{y}, %{customdata[0]}<br>" + value + " %{customdata[1]}<extra></extra>"))
    _outline(fig, flag, layers, x_of=lambda j: starts[j])
    plan = np.zeros_like(flag)
    if planned:
        per_channel = _planned_flags(units, planned, layers, n)
        for j in range(z.shape[1]):
            plan[:, j] = per_channel[:, j * size:(j + 1) * size].any(axis=1)
    _outline(fig, plan, layers, x_of=lambda j: starts[j], name="planned removal (≥1 channel of the bin)", color="red",
             size=20)
    fig.update_layout(title=f"{title} · {label} colour scale",
                      xaxis_title=f"first channel of the bin ({size} channels per bin; outlined: most of the bin unprunable)",
                      yaxis_title="layer", yaxis=dict(autorange="reversed", dtick=1 if len(layers) <= 32 else None),
                      showlegend=bool(flag.any() or plan.any()), legend=_LEGEND)
    return fig


def layer_bars(report: "KnowledgeReport") -> go.Figure:
    """Per-layer total score, stacked by kind; groups spanning the network (hidden) in a narrow panel of their own
    with its own axis — on one axis, the hidden group's total (every layer's residual channels) dwarfed the layers."""
    from plotly.subplots import make_subplots

    u = report.units
    wide = u[u["layer"].isna()]
    two = not wide.empty
    fig = make_subplots(rows=1, cols=2, column_widths=[0.82, 0.18], horizontal_spacing=0.1,
                        subplot_titles=["per layer", "whole network"]) if two else go.Figure()
    at = dict(row=1, col=1) if two else {}
    layered = u[u["layer"].notna()]
    x_all: list[str] = []
    layered = layered[~layered["kind"].isin(OVERLAP_KINDS)]  # query heads are already in the attention bars
    for kind in [k for k in ("attention", "mlp") if k in set(layered["kind"])] + sorted(set(layered["kind"]) - {"attention", "mlp"}):
        s = layered[layered["kind"] == kind].groupby("layer")["score"].sum()
        xs = [f"layer {int(l)}" for l in s.index]
        x_all += [x for x in xs if x not in x_all]
        fig.add_trace(go.Bar(x=xs, y=s.to_numpy(), name=kind, marker_color=_KIND_COLOURS.get(kind)), **at)
    for gid, rows in wide.groupby("group", sort=False):
        kind = rows["kind"].iloc[0]
        fig.add_trace(go.Bar(x=[f"{gid}"], y=[rows["score"].sum()], name=f"{kind} (whole network)",
                             marker_color=_KIND_COLOURS.get(kind)), row=1, col=2)
    fig.update_layout(barmode="relative", title=_title(report, "Knowledge per layer"), legend=_LEGEND)
    fig.update_yaxes(title_text="sum of unit scores", **at)
    if two:
        for a in fig.layout.annotations:  # panel titles small and left, clear of the toolbar
            a.update(font=dict(size=11))
    if (u["kind"].isin(OVERLAP_KINDS)).any():
        fig.add_annotation(text="GQA query heads not stacked: they are part of the attention units", showarrow=False,
                           x=0, y=-0.18, xref="paper", yref="paper", xanchor="left", font=dict(size=11))
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
    return {"heads": head_heatmap(report), "query_heads": query_head_heatmap(report), "channels": channel_heatmap(report),
            "layers": layer_bars(report), "distribution": score_distribution(report)}


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
