"""Jobs: launch forms built from the job kinds, the job list (from the SQLite registry, so it survives
restarts), and one job's live progress, log tail, metric plots, cancel and resume.

The Dash process only validates, submits and reads: every job runs in its own worker process
(``lorashear.jobs``), and the page polls the registry (``dcc.Interval``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dash_ag_grid as dag
import plotly.graph_objects as go
from dash import ALL, Input, Output, State, ctx, dcc, html, no_update
from plotly.subplots import make_subplots

from lorashear.errors import LorashearError
from lorashear.jobs import JobParamError, cancel, reap, resume, submit
from lorashear.jobs.kinds import JobKind

from ..components import LEGEND_MARGIN_R, LEGEND_RIGHT, card, fit_headers, kv_table, progress_bar, table
from ..session import AppState

LOG_TAIL_LINES = 80
JOB_COLUMNS = [
    {"field": "id", "width": 70, "sort": "desc"},
    {"field": "kind", "width": 90},
    {"field": "status", "width": 110, "cellClass": {"function": "'job-' + params.value"}},
    {"field": "progress", "headerName": "%", "width": 70, "type": "numericColumn"},
    {"field": "stage", "minWidth": 140, "flex": 1},
    {"field": "created", "width": 178},  # "2026-12-07 01:48:39" whole, seconds included
    {"field": "duration", "headerName": "time (s)", "width": 95, "type": "numericColumn"},
    {"field": "message", "minWidth": 160, "flex": 1, "tooltipField": "message"},
]
fit_headers(JOB_COLUMNS)


def kind_options(state: AppState) -> list[dict]:
    opts = []
    for k in state.kinds.values():
        ok, why = k.availability()
        opts.append({"label": k.label if ok else f"{k.label} — not available yet", "value": k.name,
                     "disabled": not ok, "title": why})
    return opts


def first_available(state: AppState) -> str | None:
    return next((k.name for k in state.kinds.values() if k.availability()[0]), None)


def form_fields(kind: JobKind, defaults: dict[str, str] | None = None) -> list:
    fields = []
    for p in kind.params:
        pid = {"type": "jp", "name": p.name}
        default = (defaults or {}).get(p.name, p.default)
        if p.type == "bool":
            control = dcc.Checklist(id=pid, options=[{"label": " " + p.label, "value": p.name}],
                                    value=[p.name] if default else [], className="check")
            label = None
        elif p.type == "choice":
            control = dcc.Dropdown(id=pid, options=list(p.choices), value=default, clearable=False)
            label = p.label
        else:
            control = dcc.Input(id=pid, type="text", value="" if default is None else str(default),
                                placeholder=p.help or p.type, debounce=False, className="text")
            label = p.label + (" *" if p.required else "")
        methods = ",".join(getattr(p, "methods", ()) or ())
        fields.append(html.Div([html.Label(label) if label else None, control,
                                html.Div(p.help, className="help") if p.help and p.type == "bool" else None,
                                html.Div(id={"type": "jp-err", "name": p.name}, className="field-error")],
                               className="field", id={"type": "jp-box", "name": p.name, "methods": methods},
                               style=field_style(methods, selector_value(kind, defaults))))
    return fields


def selector_name(kind: JobKind) -> str:
    """The field whose value a parameter's ``methods`` names: ``method`` (prune), ``estimator`` (analyze)."""
    return getattr(kind.settings, "SELECTOR", "method") if kind.settings is not None else "method"


def selector_value(kind: JobKind, defaults: dict | None) -> str | None:
    name = selector_name(kind)
    p = next((p for p in kind.params if p.name == name), None)
    return None if p is None else (defaults or {}).get(name, p.default)


def field_style(methods: str, chosen: str | None) -> dict:
    """Shown when the field applies to the chosen method (or to every method); hidden otherwise — LHSPG's ε is
    no question to ask of a magnitude run."""
    if not methods or chosen is None or chosen in methods.split(","):
        return {}
    return {"display": "none"}


def applicable(kind: JobKind, values: dict) -> dict:
    """``values`` without the fields hidden for the chosen method (a value typed before switching method is
    not the user's request for this method, and would be refused as "does not apply")."""
    chosen = values.get(selector_name(kind))
    return {k: v for k, v in values.items()
            if not field_style(",".join(next((p.methods for p in kind.params if p.name == k), ()) or ()), chosen)}


def tab_defaults(state: AppState, mv=None) -> dict:
    """Form prefills for one tab: the model that tab browses (not the one the app started on, nor the one another
    tab browses now); a structure-only source (a config file) prefills only the graph form's source."""
    out = dict(state.form_defaults)
    if mv is not None and mv.source:
        out.update(source=mv.source, meta=bool(mv.meta))
        if Path(mv.source).is_dir():
            out["model"] = mv.source
        else:
            out.pop("model", None)
    return out


def _form(state: AppState, kind_name: str | None, prefill: dict | None = None, mv=None) -> list:
    """The form of one kind, prefilled for the tab's model — or, for a clone, with a job's own parameters."""
    if kind_name is None or kind_name not in state.kinds:
        return [html.P("No job kind can run yet.", className="muted")]
    k = state.kinds[kind_name]
    ok, why = k.availability()
    if not ok:
        return [html.P(k.description), html.Div(why, className="unavailable")]
    if prefill and prefill.get("kind") == kind_name:
        note = html.P(f"Parameters of job {prefill['job']}: change what you want and press Run.", className="ok",
                      id="job-form-clone")
        return [html.P(k.description, className="muted"), note, *form_fields(k, clone_defaults(k, prefill["params"]))]
    return [html.P(k.description, className="muted"), *form_fields(k, tab_defaults(state, mv))]


def clone_defaults(kind: JobKind, params: dict) -> dict:
    """A job's validated parameters as form values: every field the job had (a parameter it left blank stays
    blank, not the kind's default); parameters the kind no longer has are dropped."""
    return {p.name: params.get(p.name) for p in kind.params}


def _fmt(v):
    if isinstance(v, bool) or v is None:
        return "—" if v is None else ("yes" if v else "no")
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e15 else f"{v:.4g}"
    return str(v)


# words of result keys, spelled out for the page (the raw key stays in the label's tooltip)
_WORDS = {"ppl": "perplexity", "params": "parameters", "avg": "average", "1m": "(1 min)", "ms": "(ms)",
          "s": "(s)", "max": "max.", "min": "min.", "n": "number of", "num": "number of", "lr": "learning rate",
          "kv": "kv", "mlp": "MLP", "lora": "LoRA", "lhspg": "LHSPG", "ema": "EMA", "gguf": "GGUF", "id": "id",
          "per": "per", "macs": "MACs", "tok": "tokens"}


def result_label(key: str) -> str:
    """A result key as words: ``ppl_long_after`` -> "perplexity (long) after", ``params_before`` -> "parameters
    before", ``load_avg_1m`` -> "load average (1 min)"."""
    parts = [p for p in str(key).split("_") if p]
    if len(parts) > 1 and parts[0] == "ppl" and parts[1] in ("short", "long"):
        parts = [f"perplexity ({parts[1]})", *parts[2:]]
    words = [_WORDS.get(p.lower(), p) for p in parts]
    return " ".join(words) if words else str(key)


def result_table(result: dict):
    """A job's result as tables, not a raw dict: one row per key; a list of records (perplexity rows) becomes a
    table with one column per field, a nested dict a nested key/value table; numbers with thousands separators."""
    if not result:
        return "—"
    rows = []
    for key, value in result.items():
        if isinstance(value, dict):
            cell = result_table(value) if value else "—"
        elif isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            cols = list(dict.fromkeys(c for r in value for c in r))
            cell = table(cols, [[_fmt(r.get(c)) if not isinstance(r.get(c), (dict, list)) else str(r.get(c))
                                 for c in cols] for r in value])
        elif isinstance(value, list):
            cell = ", ".join(_fmt(v) for v in value) or "—"
        else:
            cell = _fmt(value)
        rows.append((html.Span(result_label(key), title=key), cell))
    return kv_table(rows, className="kv result")


def _unavailable_list(state: AppState) -> html.Ul:
    items = []
    for k in state.kinds.values():
        ok, why = k.availability()
        if not ok:
            items.append(html.Li([html.Strong(k.label + ": "), why]))
    return html.Ul(items, className="reasons", id="jobs-unavailable")


def _unavailable_section(state: AppState) -> list:
    """The "not available yet" heading and its list, or nothing when every kind runs (a heading over an empty
    list reads as something missing)."""
    items = _unavailable_list(state)
    return [html.H4("Not available yet", className="sub"), items] if items.children else []


def job_rows(state: AppState) -> list[dict]:
    reap(state.registry)
    rows = []
    for j in state.registry.list(limit=500):
        rows.append({
            "id": j.id, "rid": str(j.id), "kind": j.kind, "status": j.status, "progress": round(j.progress * 100),
            "stage": j.stage, "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created)),
            "duration": round(j.duration, 1) if j.duration is not None else None, "message": j.message or "",
        })
    return rows


def layout(state: AppState, mv=None) -> html.Div:
    default = first_available(state)
    return html.Div([
        html.Div([
            card("New job", dcc.Dropdown(id="job-kind", options=kind_options(state), value=default,
                                         clearable=False),
                 html.Div(_form(state, default, mv=mv), id="job-form"),
                 html.Button("Run", id="job-submit", className="btn primary"),
                 html.Div(id="job-submit-msg", className="msg"),
                 *_unavailable_section(state), className="narrow"),
            card("Jobs", dag.AgGrid(
                id="jobs-grid", rowData=job_rows(state), columnDefs=JOB_COLUMNS, getRowId="params.data.rid",
                defaultColDef={"sortable": True, "resizable": True, "filter": True},
                dashGridOptions={"rowSelection": {"mode": "singleRow", "enableClickSelection": True,
                                                  "checkboxes": False},
                                 "animateRows": False, "tooltipShowDelay": 300},
                style={"height": "34vh", "width": "100%"}), className="wide"),
        ], className="row"),
        card("Job", html.Div(html.P("Select a job.", className="muted"), id="job-head"),
             html.Div([html.Button("Cancel", id="job-cancel", className="btn danger", disabled=True),
                       html.Button("Resume", id="job-resume", className="btn", disabled=True),
                       html.Button("Browse this model", id="job-browse", className="btn", disabled=True,
                                   title="open the graph / model of this job (a pruned result is traced first)"),
                       html.Button("Clone", id="job-clone", className="btn", disabled=True,
                                   title="fill the form with this job's parameters, to run it again (changed or not)"),
                       dcc.Loading(html.Span(id="job-action-msg", className="msg"), type="circle",
                                   id="job-action-loading", delay_show=150, parent_style={"display": "inline-block"},
                                   overlay_style={"visibility": "visible", "opacity": 0.6})],
                      className="toolbar"),
             progress_bar(0.0, id="job-progress"),
             html.Div([
                 html.Div([html.H4("Log (tail)"), html.Pre(id="job-log", className="log")], className="half"),
                 html.Div([html.H4("Metrics"), html.Div(id="job-metrics-box")], className="half"),
             ], className="row"),
             id="job-detail"),
        dcc.Store(id="job-sel", data=None),
        dcc.Store(id="job-prefill", data=None), dcc.Store(id="job-log-follow", data=None),
        dcc.Store(id="job-sig", data=None),
        dcc.Interval(id="jobs-tick", interval=700),
    ], id="jobs-view")


# metrics drawn together in one panel (one line per source / kind): names with these prefixes
_PANELS = (("sparsity_", "group sparsity (fraction of units removed)"), ("deviation_", "deviation from dense (loss)"),
           ("weight_", "mixture weights"))
_HIDDEN = ("period", "lr")  # drawn as period boundaries / not worth a panel


def period_boundaries(metrics: dict[str, list[tuple[int, float]]]) -> list[tuple[int, str]]:
    """Steps where LHSPG's period index changes (the prune job records ``period`` every step: 0 outside the
    periods, p + 1 inside period p) and what starts or ends there."""
    out, last = [], 0.0
    for step, value in metrics.get("period", []):
        if value != last:
            out.append((step, f"period {int(value)}" if value else f"period {int(last)} ends"))
            last = value
    return out


def metric_panels(metrics: dict[str, list[tuple[int, float]]]) -> list[tuple[str, list[str]]]:
    """(title, metric names) per panel: related metrics share one panel, the rest get one each."""
    names = sorted(n for n in metrics if n not in _HIDDEN) or sorted(metrics)
    panels: list[tuple[str, list[str]]] = []
    used: set[str] = set()
    for n in names:
        if n in used:
            continue
        prefix = next(((p, t) for p, t in _PANELS if n.startswith(p)), None)
        members = [m for m in names if prefix and m.startswith(prefix[0])] if prefix else [n]
        used.update(members)
        panels.append((prefix[1] if prefix else n, members))
    return panels


def metrics_figure(metrics: dict[str, list[tuple[int, float]]]) -> go.Figure:
    """One panel per metric (or per family: sparsity per kind, deviation / mixture weight per source), shared step
    axis, period boundaries as dashed vertical lines on every panel."""
    panels = metric_panels(metrics)
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, subplot_titles=[t for t, _ in panels],
                        vertical_spacing=min(0.12, 0.3 / max(1, len(panels))))
    # one legend per panel that needs one, beside that panel (a single legend sat beside the top panel, naming
    # the lines of another)
    legends: dict[str, dict] = {}
    for i, (_title, names) in enumerate(panels, start=1):
        key = None
        if len(names) > 1:
            key = "legend" if not legends else f"legend{len(legends) + 1}"
            top = fig.layout[f"yaxis{'' if i == 1 else i}"].domain[1]
            legends[key] = {**LEGEND_RIGHT, "y": top}
        for name in names:
            steps, values = zip(*metrics[name])
            fig.add_scatter(x=list(steps), y=list(values), mode="lines+markers" if len(steps) < 50 else "lines",
                            name=name, row=i, col=1, showlegend=key is not None, legend=key or "legend")
    # period boundaries: dashed lines on every panel, labelled above the top panel (in the margin, clear of the
    # curves: rotated labels inside the plot sat on the loss curve); the full wording on hover
    for step, what in period_boundaries(metrics):
        fig.add_vline(x=step, line_dash="dash", line_color="#999", line_width=1)
        short = "end" if what.endswith("ends") else what.replace("period ", "P")
        fig.add_annotation(x=step, y=1.0, yref="paper", yshift=18, text=short, hovertext=what, showarrow=False,
                           xanchor="center", yanchor="bottom", font=dict(size=9, color="#777"))
    fig.update_layout(height=max(220, 170 * len(panels)), margin=dict(l=50, r=LEGEND_MARGIN_R, t=58, b=40),
                      template="plotly_white", **legends)
    titles = {t for t, _ in panels}
    for a in fig.layout.annotations:  # subplot titles top-left, clear of the toolbar
        if a.text in titles:
            a.update(x=0.0, xanchor="left")
    fig.update_xaxes(title_text="step", row=len(panels), col=1)
    return fig


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - 64_000))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def submit_form(state: AppState, kind: str, names: list[str], values: list) -> tuple[html.Span, list[str], int | None]:
    """Validate and submit the form's values: (message, one error per field, new job id or None)."""
    errs = [""] * len(names)
    given = dict(zip(names, values))
    if kind in state.kinds:
        given = applicable(state.kinds[kind], given)
    try:
        job = submit(state.registry, kind, given, state.runs_dir, kinds=state.kinds,
                     env=state.worker_env)
    except JobParamError as exc:
        errs = [exc.errors.get(n, "") for n in names]
        extra = "; ".join(f"{k}: {v}" for k, v in exc.errors.items() if k not in names)
        return html.Span("Fix the marked fields." + (f" {extra}" if extra else ""), className="error"), errs, None
    except LorashearError as exc:
        return html.Span(str(exc), className="error"), errs, None
    return html.Span(f"Started job {job.id} ({job.kind}).", className="ok"), errs, job.id


def register(app, state: AppState, get_model=None) -> None:
    reg = state.registry

    @app.callback(Output("job-form", "children"), Input("job-kind", "value"), Input("job-prefill", "data"),
                  State("model-key", "data"), prevent_initial_call=True)
    def show_form(kind, prefill, model):
        return _form(state, kind, prefill, get_model(model) if get_model else None)

    @app.callback(
        Output("job-kind", "value"), Output("job-prefill", "data"),
        Input("job-clone", "n_clicks"), State("job-sel", "data"), prevent_initial_call=True,
    )
    def clone(_n, job_id):
        """Clone: the form of the job's kind with its parameters (Run submits a new job; nothing is re-used)."""
        if job_id is None:
            return no_update, no_update
        try:
            j = reg.get(job_id)
        except LorashearError:
            return no_update, no_update
        if j.kind not in state.kinds:
            return no_update, no_update
        return j.kind, {"kind": j.kind, "job": j.id, "params": j.params, "t": time.time()}

    # the log tail follows its newest line — unless the reader scrolled up to read, then it stays where they are
    app.clientside_callback(
        """
        function(children) {
            const el = document.getElementById("job-log");
            if (!el) { return null; }
            if (!el.lorashearWatch) {
                el.lorashearWatch = true;
                el.lorashearFollow = true;
                el.addEventListener("scroll", () => {
                    el.lorashearFollow = el.scrollTop + el.clientHeight >= el.scrollHeight - 24;
                });
            }
            if (el.lorashearFollow) {
                window.requestAnimationFrame(() => { el.scrollTop = el.scrollHeight; });
            }
            return null;
        }
        """,
        Output("job-log-follow", "data"), Input("job-log", "children"),
    )

    @app.callback(
        Output("job-submit-msg", "children"), Output({"type": "jp-err", "name": ALL}, "children"),
        Output("job-sel", "data", allow_duplicate=True),
        Input("job-submit", "n_clicks"),
        State("job-kind", "value"), State({"type": "jp", "name": ALL}, "value"),
        State({"type": "jp", "name": ALL}, "id"),
        prevent_initial_call=True,
    )
    def do_submit(_n, kind, values, ids):
        msg, errs, job_id = submit_form(state, kind, [i["name"] for i in ids], values)
        return msg, errs, (no_update if job_id is None else job_id)

    @app.callback(
        Output({"type": "jp-box", "name": ALL, "methods": ALL}, "style"),
        Input({"type": "jp", "name": ALL}, "value"), State({"type": "jp", "name": ALL}, "id"),
        State({"type": "jp-box", "name": ALL, "methods": ALL}, "id"), State("job-kind", "value"),
        prevent_initial_call=True,
    )
    def method_fields(values, ids, boxes, kind):
        """Fields that apply to some methods only follow the chosen method."""
        if kind not in state.kinds:
            return [no_update] * len(boxes)
        chosen = dict(zip((i["name"] for i in ids), values)).get(selector_name(state.kinds[kind]))
        return [field_style(b["methods"], chosen) for b in boxes]

    @app.callback(
        Output("jobs-grid", "rowData"),
        Input("jobs-tick", "n_intervals"), Input("job-sel", "data"), State("jobs-grid", "rowData"),
    )
    def refresh_list(_n, _sel, current):
        rows = job_rows(state)
        return no_update if rows == current else rows

    @app.callback(
        Output("job-sel", "data"), Output("jobs-grid", "selectedRows"),
        Input("jobs-grid", "selectedRows"), Input("job-sel", "data"), prevent_initial_call=True,
    )
    def pick(rows, job_id):
        """Both ways, in one callback (two would be a dependency cycle): a click selects the job shown; a job
        shown by any other way (a form's submit, the Prune tab, Clone) becomes the grid's highlighted row."""
        return sync_selection(ctx.triggered_id, rows, job_id)

    @app.callback(
        Output("job-head", "children"), Output("job-progress", "children"), Output("job-log", "children"),
        Output("job-metrics-box", "children"), Output("job-cancel", "disabled"), Output("job-resume", "disabled"),
        Output("job-browse", "disabled"), Output("job-clone", "disabled"), Output("job-sig", "data"),
        Input("jobs-tick", "n_intervals"), Input("job-sel", "data"), State("job-sig", "data"),
    )
    def show_job(_n, job_id, sig):
        if job_id is None:
            return (html.P("Select a job.", className="muted"), progress_bar(0).children, "", None, True, True,
                    True, True, None)
        try:
            j = reg.get(job_id)
        except LorashearError as exc:
            return html.P(str(exc)), no_update, no_update, no_update, True, True, True, True, None
        metrics = reg.metrics(job_id)
        log_size = j.log_path.stat().st_size if j.log_path.exists() else 0
        new_sig = [j.id, j.status, round(j.progress, 4), j.stage, log_size, sum(len(v) for v in metrics.values())]
        if new_sig == sig:
            return (no_update,) * 9
        head = kv_table([
            ("job", f"{j.id} · {j.kind}"), ("status", html.Span(j.status, className=f"job-{j.status}")),
            ("stage", j.stage or "—"),
            ("parameters", ", ".join(f"{k}={v}" for k, v in j.params.items()) or "—"),
            ("runs on", runs_on(j)),
            ("time", f"{j.duration:.1f} s" if j.duration is not None else "—"),
            ("message", j.message or "—"),
            ("result", result_table(j.result)),
            ("artifacts", artifact_list(j)),
            ("work dir", j.workdir),
        ])
        status = {"succeeded": "ok", "failed": "bad", "cancelled": "bad"}.get(j.status, "")
        bar = progress_bar(j.progress, status=status).children
        fig = dcc.Graph(figure=metrics_figure(metrics), config={"displaylogo": False}) if metrics else \
            html.P("No metrics recorded.", className="muted")
        browse = not browsable(j)
        resumable = not (j.resumable and j.status in ("failed", "cancelled"))
        clone_off = j.kind not in state.kinds or not state.kinds[j.kind].availability()[0]
        return head, bar, _tail(j.log_path), fig, not j.active, resumable, browse, clone_off, new_sig

    @app.callback(
        Output("job-action-msg", "children"), Output("job-sig", "data", allow_duplicate=True),
        Input("job-cancel", "n_clicks"), Input("job-resume", "n_clicks"), State("job-sel", "data"),
        prevent_initial_call=True,
    )
    def act(_c, _r, job_id):
        if job_id is None:
            return no_update, no_update
        try:
            if ctx.triggered_id == "job-cancel":
                return (f"Job {job_id} cancelled." if cancel(reg, job_id) else f"Job {job_id} was not running."), None
            resume(reg, job_id, env=state.worker_env)
            return f"Job {job_id} resumed.", None
        except LorashearError as exc:
            return html.Span(str(exc), className="error"), None

    @app.callback(
        Output("url", "href"), Output("job-action-msg", "children", allow_duplicate=True),
        Input("job-browse", "n_clicks"), State("job-sel", "data"),
        prevent_initial_call=True,
    )
    def browse(_n, job_id):
        try:
            graph_job = browse_job(state, reg.get(job_id))
        except LorashearError as exc:
            return no_update, html.Span(str(exc), className="error")
        if graph_job is None:
            return no_update, no_update
        state.model_job = graph_job.id
        state.model_error = None
        return "/", no_update


def sync_selection(trigger: Any, rows: list[dict] | None, job_id: int | None) -> tuple[Any, Any]:
    """(job-sel, grid selectedRows) after ``trigger`` changed: the grid's click picks the job; a new job shown
    highlights its row (by row id); nothing changes when they already agree."""
    picked = rows[0]["id"] if rows else None
    if trigger == "jobs-grid":
        return (picked if picked is not None and picked != job_id else no_update), no_update
    if job_id is None or picked == job_id:
        return no_update, no_update
    return no_update, {"ids": [str(job_id)]}


def runs_on(j) -> str:
    """Where the job runs or ran: the Celery worker (host:pid) of a queued job, or the local worker process."""
    if j.backend == "celery":
        return f"worker {j.worker}" if j.worker else "waiting for a worker"
    return f"local process {j.pid}" if j.pid else "—"


def artifact_list(j):
    """The job's artifacts; files link to the app's download route (served only from inside the runs folder and
    the job's own files, viz/access.py); folders (a model) are named with their path and offered as one zip —
    "Browse this model" opens them."""
    if not j.artifacts:
        return "—"
    items = []
    for name, path in j.artifacts.items():
        if Path(path).is_file():
            items.append(html.Li([html.A(name, href=f"/artifact/{j.id}/{quote(name, safe='')}"), f" · {path}"]))
        elif Path(path).is_dir():  # a model folder: one zip, streamed (viz/access.py)
            items.append(html.Li([f"{name}: {path} · ",
                                  html.A("download as .zip", href=f"/archive/{j.id}/{quote(name, safe='')}",
                                         className="archive-link")]))
        else:
            items.append(html.Li(f"{name}: {path}"))
    return html.Ul(items)


def browsable(j) -> bool:
    """A succeeded graph job, or a succeeded job whose output is a model folder (prune, export, recover)."""
    return j.status == "succeeded" and (j.kind == "graph" or ("model" in j.artifacts
                                                              and Path(j.artifacts["model"]).is_dir()))


def browse_job(state: AppState, j):
    """The graph job to browse for job ``j``: itself for a graph job; for a job that wrote a model folder, the
    graph job of that folder (found, or run now in a worker and waited for — seconds on small models)."""
    from ..session import ensure_graph

    if not browsable(j):
        return None
    if j.kind == "graph":
        return j
    return ensure_graph(state, j.artifacts["model"], meta=False, echo=lambda m: None, timeout_s=600)
