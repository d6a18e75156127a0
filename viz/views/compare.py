"""Compare dense, pruned and recovered models: parameters, perplexity per source, latency, and per-layer
surviving heads/channels. The numbers come from Evaluate jobs and export sidecars; until those exist in
the library this view says what is missing instead of drawing anything."""
from __future__ import annotations

import importlib.util

from dash import html

from ..components import card, unavailable


def layout() -> html.Div:
    missing = []
    if importlib.util.find_spec("lorashear.evaluate") is None:
        missing.append("evaluation (lorashear.evaluate) has not landed, so there are no Evaluate jobs")
    missing.append("export sidecars (per-layer surviving heads/channels) come with the compress/export step, "
                   "which has not landed")
    return html.Div(card("Dense vs pruned vs recovered",
                         unavailable("; ".join(missing) + ".", id="compare-unavailable")), id="compare-view")
