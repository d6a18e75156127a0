"""The Dash app: layout shell, the shared selection store, and start-up.

Views live in ``viz/views``; each has ``layout(...)`` and ``register(app, ...)``. The selection (groups,
focused node) is one ``dcc.Store`` ("sel") that every view reads; one hub callback writes it, so the graph,
the groups grid and the details panel cannot disagree.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import dash
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from lorashear.errors import LorashearError

from . import access, model_view
from .components import human
from .session import AppState, default_runs_dir, demo_model_dir, ensure_graph, make_state
from .views import compare, graph, groups, jobs, knowledge, overview, prune

ASSETS = Path(__file__).resolve().parent.parent / "assets"
HEARTBEAT_S = 2  # the page asks the server for a heartbeat this often …
UNREACHABLE_S = 8  # … and says the server is unreachable when none has arrived for this long

# Client side, on every heartbeat tick: how long since the server last answered (the "hb" store's own
# modified_timestamp; the page load before the first answer). A dead server answers nothing, so every number and
# status on the page is as old as that answer — the banner says so instead of showing a job "running" forever, and
# the page's "stale" class marks every active job status as last known (assets/style.css).
SERVER_DOWN_JS = """
function(n, ts) {
    const now = Date.now();
    window.lorashearLoaded = window.lorashearLoaded || now;
    const last = (ts && ts > 0) ? ts : window.lorashearLoaded;
    const age = (now - last) / 1000;
    if (age < %d) { return ["", {display: "none"}, "page"]; }
    return ["The server is unreachable: no answer for " + Math.round(age) + " s (since " +
            new Date(last).toLocaleTimeString() + "). Everything shown, job status included, is as of then. " +
            "Restart the app and reload this page.", {}, "page stale"];
}
""" % UNREACHABLE_S


def _model(state: AppState):
    """The ModelView being browsed (None if there is none, with ``state.model_error`` saying why)."""
    if state.model_job is None:
        return None
    try:
        return model_view.load(state.registry.get(state.model_job))
    except (LorashearError, KeyError, OSError) as exc:
        state.model_error = f"could not load graph job {state.model_job}: {exc}"
        return None


def model_of(state: AppState, job_id: int | None):
    """The ModelView of graph job ``job_id``: the model the asking tab browses (its ``model-key`` store).

    Each tab keeps the model it was opened on; "Browse" in one tab only changes what a *new* page load shows
    (``state.model_job``), so another open tab never answers with a different model's graph or groups. None when
    the job is not a succeeded graph job (any more)."""
    if job_id is None:
        return None
    if job_id == state.model_job:
        return _model(state)
    try:
        job = state.registry.get(job_id)
    except (LorashearError, KeyError):
        return None
    if job.kind != "graph" or job.status != "succeeded":
        return None
    try:
        return model_view.load(job)
    except (LorashearError, KeyError, OSError):
        return None


def _header(mv, state: AppState) -> html.Div:
    if mv is not None:
        what = f"{mv.opgraph.model_class} · {human(mv.n_params)} params · {mv.source}" + (" (meta)" if mv.meta else "")
    else:
        what = state.model_error or "no model"
    return html.Div([
        html.Span("lorashear", className="brand"),
        html.Span(what, id="model-line", className="model-line"),
        html.Span(id="sel-summary", className="sel-summary"),
        html.Button("Clear selection", id="sel-clear", className="btn small"),
    ], className="header")


def serve_layout(state: AppState):
    mv = _model(state)
    return html.Div([
        dcc.Location(id="url", refresh=True),
        _header(mv, state),
        dcc.Tabs(id="tabs", value="overview", children=[
            dcc.Tab(label="Model", value="overview", children=overview.layout(mv, state.model_error)),
            dcc.Tab(label="Graph", value="graph", children=graph.layout(mv, state.cap)),
            dcc.Tab(label="Groups", value="groups", children=groups.layout(mv, *groups.scores_for(state, mv))),
            dcc.Tab(label="Knowledge", value="knowledge", children=knowledge.layout(state, mv)),
            dcc.Tab(label="Prune", value="prune", children=prune.layout(state, mv)),
            dcc.Tab(label="Jobs", value="jobs", children=jobs.layout(state, mv)),
            dcc.Tab(label="Compare", value="compare", children=compare.layout(state)),
        ]),
        dcc.Store(id="model-key", data=mv.job_id if mv else None),
        dcc.Store(id="cap", data=state.cap),
        dcc.Store(id="sel", data={"groups": [], "node": None}),
        dcc.Store(id="graph-state", data=graph.initial_state(mv)),
        dcc.Store(id="hb"), dcc.Interval(id="hb-tick", interval=HEARTBEAT_S * 1000),
        html.Div(id="server-down", className="server-down", role="alert", style={"display": "none"}),
    ], className="page", id="page")


def _keep_unit(sel: dict) -> dict:
    """Drop the heatmap-chosen unit unless the selection is still exactly its group (the grid echoing a heatmap
    click back must not lose the unit; selecting anything else must)."""
    unit = sel.get("unit") or {}
    if sel.get("groups") != [unit.get("group")]:
        sel.pop("unit", None)
    return sel


def create_app(state: AppState, token: str | None = None, port: int | None = None) -> Dash:
    """The Dash app on ``state``; with ``token``, every request must carry it (``viz/access.py``)."""
    app = Dash(__name__, title="lorashear", assets_folder=str(ASSETS), serve_locally=True,
               suppress_callback_exceptions=True, update_title=None)
    access.install(app.server, token, state.runs_dir, registry=state.registry, port=port)
    app.layout = lambda: serve_layout(state)

    def get_model(job_id):  # the model of the tab asking (its model-key store), not the newest browsed one
        return model_of(state, job_id)

    graph.register(app, get_model)
    groups.register(app, get_model)
    groups.register_export(app, state, get_model)
    groups.register_scores(app, state, get_model)
    jobs.register(app, state, get_model)
    compare.register(app, state)
    knowledge.register(app, state, get_model)
    prune.register(app, state, get_model)

    @app.callback(
        Output("sel", "data"), Output("groups-grid", "selectedRows"), Output("groups-grid", "scrollTo"),
        Input("groups-grid", "selectedRows"), Input("cy", "tapNode"), Input("sel-clear", "n_clicks"),
        Input({"type": "group-link", "gid": ALL}, "n_clicks"),
        Input("kn-heads", "clickData"), Input("kn-qheads", "clickData"), Input("kn-channels", "clickData"),
        Input("plan-select", "n_clicks"),
        State("sel", "data"), State("kn-report", "value"), State("plan-store", "data"), State("model-key", "data"),
        prevent_initial_call=True,
    )
    def selection_hub(rows, tap, _clear, _links, head_click, qhead_click, channel_click, _plan_sel, sel, report_job,
                      plan, model_key):
        sel = dict(sel or {"groups": [], "node": None})
        trig = ctx.triggered_id
        if trig == "groups-grid":
            sel["groups"] = [r["id"] for r in rows or []]
            return _keep_unit(sel), no_update, no_update
        if trig == "cy":
            sel["node"] = (tap or {}).get("data", {}).get("id")
            return sel, no_update, no_update
        if trig == "sel-clear":
            return {"groups": [], "node": None}, [], no_update
        if isinstance(trig, dict) and trig.get("type") == "group-link":
            if not any(t["value"] for t in ctx.triggered):
                return no_update, no_update, no_update
            sel["groups"] = [trig["gid"]]
            return _keep_unit(sel), {"ids": [trig["gid"]]}, {"rowId": trig["gid"], "rowPosition": "middle"}
        if trig == "plan-select":  # the planned groups light up in the grid and the graph
            gids = sorted((plan or {}).get("plan", {}).get("removal", {}))
            if not gids:
                return no_update, no_update, no_update
            sel["groups"] = gids
            return _keep_unit(sel), {"ids": gids}, {"rowId": gids[0], "rowPosition": "top"}
        if trig in knowledge.CLICK_KINDS:
            click = {"kn-heads": head_click, "kn-qheads": qhead_click, "kn-channels": channel_click}[trig]
            hit = knowledge.group_of_click(state, report_job, click, knowledge.CLICK_KINDS[trig], get_model(model_key))
            if hit is None:  # no such unit in the browsed model (or the report is another model's): select nothing
                return no_update, no_update, no_update
            gid, unit = hit
            sel["groups"] = [gid]
            sel["unit"] = {"group": gid, "unit": unit}
            return sel, {"ids": [gid]}, {"rowId": gid, "rowPosition": "middle"}
        return no_update, no_update, no_update

    @app.callback(Output("hb", "data"), Input("hb-tick", "n_intervals"))
    def heartbeat(_n):  # a new value every time, so the store's modified_timestamp says when the server answered
        return time.time()

    app.clientside_callback(SERVER_DOWN_JS, Output("server-down", "children"), Output("server-down", "style"),
                            Output("page", "className"), Input("hb-tick", "n_intervals"),
                            State("hb", "modified_timestamp"))

    @app.callback(Output("sel-summary", "children"), Input("sel", "data"))
    def summarize(sel):
        gids = (sel or {}).get("groups") or []
        node = (sel or {}).get("node")
        parts = []
        unit = (sel or {}).get("unit") or {}
        if gids:
            parts.append(f"{len(gids)} group{'s' if len(gids) > 1 else ''}: " + ", ".join(gids[:3])
                         + (" …" if len(gids) > 3 else "")
                         + (f" unit {unit['unit']}" if gids == [unit.get("group")] else ""))
        if node:
            parts.append(f"node {node}")
        return "Selected: " + " · ".join(parts) if parts else ""

    return app


def startup_model(state: AppState, args: argparse.Namespace) -> None:
    """Point ``state`` at a graph job for the requested model (running one if needed)."""
    if args.config and not args.meta:
        raise LorashearError("--config has no weights: add --meta to browse the structure")
    if args.model:  # a named model or a .gguf file: its cached Hugging Face folder (converted once)
        from lorashear.loading import resolve_source

        source, meta = resolve_source(args.model), args.meta
    elif args.config:
        source, meta = Path(args.config), True
    else:
        demo, why = demo_model_dir()
        if demo is None:
            state.model_error = f"No model: {why}. Start with --model DIR or --config FILE --meta."
            print(f"lorashear app: {state.model_error}", file=sys.stderr)
            return
        source, meta = demo, args.meta
    job = ensure_graph(state, source, meta, retrace=args.retrace)
    state.model_job = job.id
    state.form_defaults["source"] = str(Path(source).resolve())
    state.form_defaults["meta"] = bool(meta)
    if Path(source).is_dir():
        state.form_defaults["model"] = str(Path(source).resolve())


def attach_queue(state: AppState, url: str) -> None:
    """Send this app's jobs to the Celery worker pool at ``url`` (``lorashear worker``) instead of local
    processes; what the pool's workers report is drained into the registry by a background thread."""
    from lorashear.jobs import reap
    from lorashear.jobs.queue import JobQueue

    queue = JobQueue(url, state.runs_dir)
    queue.ping()
    state.registry.queue = queue
    reap(state.registry)  # what finished (or died) while no app was watching
    queue.start_bridge(state.registry)


def run(args: argparse.Namespace) -> int:
    token, generated = access.resolve_token(args.host, getattr(args, "token", None), debug=args.debug)
    state = make_state(args.runs or default_runs_dir(), cap=args.cap)
    where = "local worker processes"
    if getattr(args, "queue", None):
        from lorashear.jobs.queue import redact

        attach_queue(state, args.queue)
        where = f"Celery workers on {redact(args.queue)}"
    startup_model(state, args)
    app = create_app(state, token=token, port=args.port)
    urls = access.open_urls(args.host, args.port, token if generated else None)
    print(f"lorashear app on {access.open_urls(args.host, args.port)[0]}  (listening on {args.host}; jobs: "
          f"{state.registry.path}, run by {where})",
          flush=True)
    if generated:  # printed once, like Jupyter's: whoever reads this terminal may use the app
        print("  access token required beyond loopback; open " + "  or  ".join(urls), flush=True)
    elif len(urls) > 1:
        print("  also " + "  ".join(urls[1:]), flush=True)
    elif token:
        print("  access token required (the one given with --token / $LORASHEAR_TOKEN)", flush=True)
    if not args.debug:  # werkzeug logs every request: with the page polling, one line per poll buries the rest
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app.run(host=args.host, port=args.port, debug=args.debug, use_reloader=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .options import add_arguments

    parser = argparse.ArgumentParser(prog="app.py", description="lorashear Dash app")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except LorashearError as exc:
        print(f"lorashear app: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["create_app", "serve_layout", "run", "main", "dash"]
