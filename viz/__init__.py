"""The Dash app's presentation layer: layouts, figures, graph folding and layout, callbacks.

It only reads what the library and jobs wrote (graph.json, groups.json, knowledge reports, job registry) and
launches jobs; it never runs model code in the Dash process. Entry points: ``app.py``, ``lorashear app``.
"""
