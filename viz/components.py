"""Small presentational helpers shared by the views (plain html + the CSS in assets/style.css)."""
from __future__ import annotations

from typing import Any

from dash import html


def human(n: float | int | None) -> str:
    """1234567 -> '1.23M' (parameter counts)."""
    if n is None:
        return "—"
    n = float(n)
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}" if n == int(n) else f"{n:.3g}"


# Legends in their own column right of the plot: a horizontal legend above or below the plot sat on subplot titles,
# tick labels and the toolbar (top right). Titles go top-left, in the top margin, clear of the toolbar.
LEGEND_RIGHT = dict(orientation="v", x=1.02, xanchor="left", y=1.0, yanchor="top", font=dict(size=11))
LEGEND_MARGIN_R = 170


# AG Grid header: ~8 px per character of the bold header font, plus the cell padding and the sort / menu icons
HEADER_PX_PER_CHAR = 8
HEADER_PX_EXTRA = 72


def fit_headers(columns: list[dict]) -> list[dict]:
    """Widen each column to hold its header's longest word on one line: wrapped headers broke mid-word
    ("Prunabl e") when a word was wider than the column. Returns the same dicts, changed in place."""
    for c in columns:
        name = c.get("headerName") or c["field"]
        need = HEADER_PX_PER_CHAR * max(len(w) for w in str(name).split()) + HEADER_PX_EXTRA
        for key in ("width", "minWidth"):
            if key in c and c[key] < need:
                c[key] = need
        if "width" not in c and "minWidth" not in c:
            c["minWidth"] = need
    return columns


def title_left(text: str) -> dict:
    """A figure title in the top-left corner (the toolbar sits top right)."""
    return dict(text=text, font=dict(size=13), x=0.0, xanchor="left", xref="paper", y=1.0, yanchor="bottom",
                yref="paper", pad=dict(b=6))


def card(title: str, *children: Any, id: str | None = None, className: str = "") -> html.Div:
    kw = {"id": id} if id else {}
    return html.Div([html.H3(title, className="card-title"), *children], className=f"card {className}", **kw)


def unavailable(message: str, id: str | None = None) -> html.Div:
    """The 'not available yet' state: says what is missing and how it will appear; never placeholder data."""
    kw = {"id": id} if id else {}
    return html.Div([html.Strong("Not available yet. "), message], className="unavailable", **kw)


def kv_table(rows: list[tuple[str, Any]], className: str = "kv") -> html.Table:
    return html.Table([html.Tr([html.Th(k), html.Td(v)]) for k, v in rows], className=className)


def table(header: list[str], rows: list[list[Any]], className: str = "data") -> html.Table:
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in header])),
                       html.Tbody([html.Tr([html.Td(c) for c in r]) for r in rows])], className=className)


def progress_bar(fraction: float, id: str | None = None, status: str = "") -> html.Div:
    pct = max(0.0, min(1.0, float(fraction or 0.0))) * 100
    kw = {"id": id} if id else {}
    return html.Div(
        html.Div(f"{pct:.0f}%", className=f"progress-bar {status}", style={"width": f"{pct:.1f}%"}),
        className="progress", role="progressbar", **{"aria-valuenow": f"{pct:.0f}"}, **kw,
    )


def plot_template():
    """plotly_white's layout without its per-trace-type defaults: the figures set their own colour scales, and
    assigning the full template deep-copies it on every figure (~35 ms each; the plan preview draws three per
    slider move)."""
    global _TEMPLATE
    if _TEMPLATE is None:
        import plotly.graph_objects as go
        import plotly.io as pio

        _TEMPLATE = go.layout.Template(layout=pio.templates["plotly_white"].layout)
    return _TEMPLATE


_TEMPLATE = None
