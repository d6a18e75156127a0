"""Knowledge distribution: heatmaps (layer × head, layer × channel bin), per-layer bars, score
distribution and a target-ratio plan preview — drawn from knowledge reports written by Analyze jobs.

Until the knowledge analysis exists in the library (``lorashear.knowledge``) this view says so; it never
draws made-up scores.
"""
from __future__ import annotations

import importlib.util

from dash import html

from ..components import card, unavailable


def library_available() -> bool:
    return importlib.util.find_spec("lorashear.knowledge") is not None


def layout() -> html.Div:
    if not library_available():
        msg = ("run an analysis — the knowledge analysis (lorashear.knowledge) has not landed in the library, "
               "so there is no Analyze job and no report to show. Heatmaps of layer × head and layer × "
               "channel-bin scores, per-layer bars, the score distribution and the target-ratio plan preview "
               "appear here once Analyze jobs can write reports.")
    else:
        msg = ("run an analysis — lorashear.knowledge exists, but this app does not read its reports yet "
               "(the report format is wired in viz/views/knowledge.py when it is fixed).")
    return html.Div(card("Knowledge distribution", unavailable(msg, id="knowledge-unavailable")),
                    id="knowledge-view")
