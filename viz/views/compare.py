"""Compare dense, pruned and recovered models side by side: exact parameters, per-layer sizes (dense bars next
to pruned bars; heads and channels kept per layer, where one removed head is one bar step), perplexity per source,
and latency / throughput **with the conditions that produced them** (device, dtype, CPU threads, load average,
token budget, when) — a number measured on a busy CPU must not read as a property of the model.

Only measured numbers are shown. Rows come from the registry's succeeded jobs:

* a Prune job gives two rows — the dense model as the run measured it before pruning (``eval_before``) and the
  pruned model (``eval_after``), same data, same token budget, same process;
* a Recover job gives the recovered model (its ``eval_after``);
* an Evaluate job gives its model (dense or pruned: a folder with an export sidecar was written by
  ``save_pruned``);
* an Export job gives a size-only row (it does not evaluate), labelled by what it exported (a plan file or a
  hand selection); a GGUF export of a selection gives one too, its model being the GGUF file.

llama.cpp's own figures (prompt and generation tokens/s, ``lorashear export --format gguf --measure``) are shown
for a model when an Export job measured a GGUF file of exactly that model (no units removed on the way: the
``<file>.llama_cpp.json`` beside its GGUF artifact, ``lorashear.deploy_measure.read_figures``), with the ratio to the
dense model it was pruned from when that one was measured under the same conditions (weight type, threads, prompt
and generation lengths). Figures of a GGUF file replaced since it was measured are refused, not shown. Without any
figures the table has no llama.cpp columns.

Per-layer parameter counts are read from each folder's safetensors headers (shapes only, no weights loaded); a
row whose job did not count its parameters (a recovered model) takes its folder's count. The device is the one the
run recorded, never the requested "auto". Each model folder has one colour in every chart of the page.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from dash import ALL, Input, Output, State, ctx, dcc, html, no_update

from ..components import LEGEND_MARGIN_R, LEGEND_RIGHT, card, table, title_left, unavailable
from ..hierarchy import layer_of
from ..session import AppState


def _sidecar(model_dir: str) -> dict | None:
    from lorashear.errors import LorashearError
    from lorashear.export import read_sidecar

    try:
        return read_sidecar(model_dir) if model_dir and Path(model_dir).is_dir() else None
    except (LorashearError, OSError):
        return None


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "—"


def _entry(job, role: str, model: str, ev: dict | None, *, threads: Any = None, params: int | None = None,
           device: str | None = None) -> dict:
    """One row. ``device``: the device the run recorded (its report's ``device``, or the cost block's); a row
    whose job recorded none says so — never the requested "auto". ``params``: the job's count, else the model
    folder's own (sidecar ``n_params``, else the safetensors headers)."""
    ev = ev or {}
    cost = ev.get("cost") or {}
    res = job.result or {}
    params = cost.get("parameters", params)
    if params is None and model:
        params = folder_params(model)
    dev = cost.get("device") or device
    if not dev and job.params.get("device") not in (None, "", "auto"):
        dev = job.params["device"]  # asked for explicitly: the job runs there or fails
    return {"job": job.id, "kind": job.kind, "role": role, "model": model,
            "params": params, "perplexity": ev.get("perplexity", []), "cost": cost,
            "conditions": {"device": dev or "device not recorded",
                           "dtype": cost.get("dtype"), "threads": threads,
                           "load": res.get("load_avg_1m"),
                           "tokens": ev.get("max_tokens_per_source", job.params.get("max_tokens")),
                           "when": _when(job.finished)}}


def folder_params(model_dir: str) -> int | None:
    """The parameter count of a model folder: its sidecar's ``n_params`` (a pruned or recovered folder), else the
    sum of its safetensors shapes (no weights read); None when the folder is gone."""
    side = _sidecar(model_dir)
    if side and side.get("n_params"):
        return int(side["n_params"])
    if not model_dir or not Path(model_dir).is_dir() or not any(Path(model_dir).glob("*.safetensors")):
        return None
    from safetensors import SafetensorError

    try:
        return sum(folder_layers(model_dir)["params"].values()) or None
    except (SafetensorError, OSError):  # a damaged or half-written folder: no count, and the page still renders
        return None


def trained_rounds(report: dict) -> str:
    """"2 training rounds": the report's ``rounds`` are evaluations — round 0 before any training, then one after
    each round — so their count is one more than the rounds trained (the log's "round k" is the k-th trained)."""
    rounds = report.get("rounds") or []
    n = max((int(r.get("round", 0)) for r in rounds), default=0)
    return f"{n} training round{'s' if n != 1 else ''}"


def export_role(job) -> str:
    """What an Export job exported: a saved plan (named by its file) or a hand selection of units."""
    plan = job.params.get("plan")
    return f"exported: export of plan {Path(plan).name}" if plan else "exported: hand selection of units"


def entries(state: AppState) -> list[dict]:
    """Every measured model, newest job first (see the module docstring for where each row comes from)."""
    out: list[dict] = []
    for j in state.registry.list(status="succeeded"):
        rep = None
        if j.kind in ("prune", "recover") and Path(j.artifacts.get("report", "")).is_file():
            rep = json.loads(Path(j.artifacts["report"]).read_text())
        if j.kind == "prune" and rep:
            out.append(_entry(j, f"pruned ({rep.get('method')}, {rep['ratio_achieved']:.1%} removed)",
                              j.artifacts.get("model", ""), rep.get("eval_after"), threads=rep.get("threads"),
                              params=rep.get("params_after"), device=rep.get("device")))
            out.append(_entry(j, "dense (before pruning)", j.params.get("model", ""), rep.get("eval_before"),
                              threads=rep.get("threads"), params=rep.get("params_before"), device=rep.get("device")))
        elif j.kind == "recover" and rep:
            out.append(_entry(j, f"recovered ({trained_rounds(rep)})", j.artifacts.get("model", ""),
                              rep.get("eval_after"), threads=rep.get("threads"), device=rep.get("device")))
        elif j.kind == "eval":
            side = _sidecar(j.params.get("model", ""))
            role = "dense" if side is None else f"pruned ({(side.get('provenance') or {}).get('method', '?')})"
            e = _entry(j, role, j.params.get("model", ""), j.result, threads=(j.result or {}).get("threads"),
                       params=(side or {}).get("n_params"), device=(j.result or {}).get("device"))
            out.append(e)
        elif j.kind == "export" and "model" in j.artifacts:
            out.append(_entry(j, export_role(j), j.artifacts["model"], None,
                              params=(j.result or {}).get("params_after")))
        elif j.kind == "export" and "gguf" in j.artifacts and _has_selection(j):
            out.append(_entry(j, f"{export_role(j)} (GGUF {j.params.get('dtype') or 'f32'})", j.artifacts["gguf"],
                              None, params=(j.result or {}).get("params_after")))
    attach_llama_cpp(state, out)
    return out


# ----------------------------------------------------------------------------------- llama.cpp figures
def _has_selection(job) -> bool:
    return bool(job.params.get("units") or job.params.get("plan"))


def model_key(model: str) -> str:
    """One spelling per model: ``demo`` → the demo folder, a run folder → its ``model/``, a path → resolved; so an
    Export job's ``model`` parameter and a Prune job's folder name the same model alike."""
    from lorashear.data import DEMO_MODEL_DIR
    from lorashear.pruned_format import run_model_folder

    if not model:
        return ""
    if model == "demo":
        return str(Path(DEMO_MODEL_DIR).resolve())
    p = Path(model).expanduser()
    if not p.exists():
        return model
    return str((run_model_folder(p) or p).resolve())


def _job_figures(job):
    """The llama.cpp figures of an Export job's GGUF file, or None (not measured, unreadable, or the file changed
    since it was measured)."""
    from lorashear.deploy_measure import read_figures
    from lorashear.errors import LorashearError

    if job.kind != "export" or "gguf" not in job.artifacts:
        return None
    try:
        return read_figures(job.artifacts["gguf"])
    except (LorashearError, OSError):
        return None


def _same_conditions(a, b) -> bool:
    return (a.dtype, a.threads, a.prompt_tokens, a.gen_tokens) == (b.dtype, b.threads, b.prompt_tokens, b.gen_tokens)


def attach_llama_cpp(state: AppState, rows: list[dict]) -> None:
    """Give each row ``llama_cpp``: a list of ``{"figures": LlamaCppFigures, "vs_dense": (prompt ×, generation ×) or
    None}``, newest measurement first, one per set of conditions (see the module docstring)."""
    by_model: dict[str, list] = {}  # model key -> figures of GGUF exports of exactly that model, newest first
    own: dict[int, tuple[Any, str]] = {}  # export job id -> (its figures, its input model): a GGUF export's own row
    for j in state.registry.list(status="succeeded", kind="export"):
        figs = _job_figures(j)
        if figs is None:
            continue
        own[j.id] = (figs, j.params.get("model", ""))
        if not _has_selection(j):
            by_model.setdefault(model_key(j.params.get("model", "")), []).append(figs)

    def dense_of(e: dict) -> str | None:
        """The dense model a row's model was pruned from (its sidecar's source, or the export's input); None for a
        dense model, or when that source is itself a pruned model."""
        if e["kind"] == "export" and e["job"] in own:
            src = own[e["job"]][1]
        else:
            side = _sidecar(e["model"])
            if side is None:
                return None
            src = (side.get("provenance") or {}).get("source", "")
        return model_key(src) if src and _sidecar(model_key(src)) is None else None

    for e in rows:
        found = [own[e["job"]][0]] if e["kind"] == "export" and e["job"] in own else by_model.get(model_key(e["model"]), [])
        kept: list = []
        for f in found:
            if not any(_same_conditions(f, k) for k in kept):
                kept.append(f)
        dense = dense_of(e)
        refs = by_model.get(dense, []) if dense else []
        e["llama_cpp"] = []
        for f in kept:
            ref = next((r for r in refs if _same_conditions(f, r)), None)
            ratio = (f.prompt_tokens_per_s / ref.prompt_tokens_per_s, f.gen_tokens_per_s / ref.gen_tokens_per_s) \
                if ref is not None else None
            e["llama_cpp"].append({"figures": f, "vs_dense": ratio})


def _llama_cpp_cell(e: dict, which: int) -> Any:
    """One line per measurement: '<dtype>: 45.1 (1.23× dense)'; the generation cell adds how it was measured."""
    items = e.get("llama_cpp") or []
    if not items:
        return html.Span("—", className="muted")
    lines: list = []
    for it in items:
        f, r = it["figures"], it["vs_dense"]
        v = f.gen_tokens_per_s if which else f.prompt_tokens_per_s
        text = f"{f.dtype or 'GGUF'}: {v:,.1f}" + (f" ({r[which]:.2f}× dense)" if r else "")
        if lines:
            lines.append(html.Br())
        lines.append(html.Span(text, className="cmp-llama-cpp"))
        if which:
            how = f.how() + (f" · perplexity {f.perplexity:.2f} ({f.ppl_tokens:,} tokens)" if f.perplexity else "")
            lines += [html.Br(), html.Span(how, className="muted cmp-conditions")]
    return html.Span(lines)


# one colour per model folder across every chart of the page (Okabe–Ito, then Tableau): the same model is the same
# colour in the perplexity chart and in every per-layer chart, whatever rows or series a chart holds
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7f7f7f", "#8c564b", "#bcbd22",
           "#17becf")


def colours(rows: list[dict]) -> dict[str, str]:
    """Model folder -> colour, in job order (a prune job's dense model before its pruned one), so a model keeps
    its colour as newer jobs add rows."""
    order = sorted(rows, key=lambda e: (e["job"], not e["role"].startswith("dense")))
    out: dict[str, str] = {}
    for e in order:
        if e["model"] not in out:
            out[e["model"]] = PALETTE[len(out) % len(PALETTE)]
    return out


# ------------------------------------------------------------------------------------------ per layer
def folder_layers(model_dir: str) -> dict[str, Any]:
    """Per-layer parameters of a model folder from its safetensors headers (no weights read), and the attention
    units (kv heads) and MLP channels kept per layer: the export sidecar's ``layer_sizes`` for a pruned folder,
    the config for a dense one. Keys of ``params``: the layer index, or ``outside`` (embeddings, final norm, head)."""
    from safetensors import safe_open

    folder = Path(model_dir)
    params: dict[Any, int] = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                n = 1
                for d in fh.get_slice(name).get_shape():
                    n *= int(d)
                layer = layer_of(name.rsplit(".", 1)[0])
                key = layer if layer is not None else "outside"
                params[key] = params.get(key, 0) + n
    side = _sidecar(model_dir)
    heads: dict[int, int] = {}
    channels: dict[int, int] = {}
    if side and side.get("layer_sizes"):
        for k, v in side["layer_sizes"].items():
            if k.isdigit():
                if "attention" in v:
                    heads[int(k)] = int(v["attention"])
                if "mlp" in v:
                    channels[int(k)] = int(v["mlp"])
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        n_layers = int(cfg.get("num_hidden_layers") or 0)
        kv = cfg.get("num_key_value_heads") or cfg.get("num_attention_heads")
        inter = cfg.get("intermediate_size")
        for i in range(n_layers):  # layers the sidecar does not list kept their config sizes
            if kv and i not in heads and side is None:
                heads[i] = int(kv)
            if inter and i not in channels and side is None:
                channels[i] = int(inter)
    return {"params": params, "heads": heads, "channels": channels}


def layer_comparison(rows: list[dict]) -> dict[str, Any]:
    """Per-layer series for each distinct model folder among ``rows`` (dense first), on shared layer labels."""
    seen: dict[str, dict] = {}
    for e in sorted(rows, key=lambda e: (not e["role"].startswith("dense"), e["job"])):
        m = e["model"]
        if m and m not in seen and Path(m).is_dir() and any(Path(m).glob("*.safetensors")):
            seen[m] = {"label": f"{e['role'].split(' (')[0]} · job {e['job']}", "model": m, **folder_layers(m)}
    layers = sorted({k for s in seen.values() for k in s["params"] if isinstance(k, int)})
    for s in seen.values():
        s["params_by_layer"] = [s["params"].get(i) for i in layers] + [s["params"].get("outside")]
        s["heads_by_layer"] = [s["heads"].get(i) for i in layers]
        s["channels_by_layer"] = [s["channels"].get(i) for i in layers]
    return {"layers": layers, "series": list(seen.values())}


def _bars(comp: dict, key: str, title: str, colour: dict[str, str], outside: bool = False) -> go.Figure:
    xs = [f"L{i}" for i in comp["layers"]] + (["outside blocks"] if outside else [])
    fig = go.Figure()
    for s in comp["series"]:
        fig.add_bar(name=s["label"], x=xs, y=s[key], marker_color=colour.get(s["model"]),
                    hovertemplate="%{x}: %{y:,}<extra>" + s["label"] + "</extra>")
    fig.update_layout(barmode="group", height=280, margin=dict(l=60, r=LEGEND_MARGIN_R, t=36, b=40),
                      template="plotly_white", title=title_left(title), legend=LEGEND_RIGHT)
    return fig


def _ppl_figure(rows: list[dict], colour: dict[str, str]) -> go.Figure:
    fig = go.Figure()
    for e in sorted(rows, key=lambda e: (e["job"], not e["role"].startswith("dense"))):  # as the per-layer bars
        ppl = e["perplexity"]
        if ppl:
            fig.add_bar(name=f"job {e['job']} · {e['role']}", x=[f"{p['source']} ({p['protocol']})" for p in ppl],
                        y=[p["ppl"] for p in ppl], marker_color=colour.get(e["model"]))
    fig.update_layout(barmode="group", height=320, margin=dict(l=50, r=LEGEND_MARGIN_R, t=36, b=60),
                      template="plotly_white", yaxis_title="perplexity", legend=LEGEND_RIGHT,
                      title=title_left("perplexity per source (lower is better)"))
    return fig


def conditions_text(c: dict) -> str:
    """'cpu float32 · 2 threads · load 3.4 · 16,384 tokens/source · 2026-12-02 10:40' — what produced a timing."""
    parts = [" ".join(str(x) for x in (c.get("device"), c.get("dtype")) if x)]
    if c.get("threads"):
        parts.append(f"{c['threads']} thread{'s' if c['threads'] != 1 else ''}")
    if c.get("load") is not None:
        parts.append(f"load {c['load']:.1f}")
    if c.get("tokens"):
        parts.append(f"{c['tokens']:,} tokens/source")
    parts.append(c.get("when") or "—")
    return " · ".join(p for p in parts if p)


def content(state: AppState) -> list:
    rows = entries(state)
    if not rows:
        return [unavailable("no measured model yet — run a Prune job (it measures the dense and the pruned model), "
                            "a Recover job, or an Evaluate job per model in the Jobs tab; its numbers appear here.",
                            id="compare-unavailable")]
    colour = colours(rows)
    protos = sorted({(p["source"], p["protocol"]) for e in rows for p in e["perplexity"]})
    cpp = any(e.get("llama_cpp") for e in rows)  # llama.cpp columns only when something was measured there
    head = ["job", "model · measured with", "parameters", "latency (ms)", "tokens/s",
            *(["llama.cpp generation tok/s", "llama.cpp prompt tok/s"] if cpp else []),
            *[f"ppl {s} ({p})" for s, p in protos], ""]
    body = []
    for e in rows:
        c = e["cost"]
        ppl = {(p["source"], p["protocol"]): p["ppl"] for p in e["perplexity"]}
        # a job that does not time its model (recover, export) says so, rather than a bare dash
        lat = (f"{c['latency_ms']:.1f} (1×{c.get('latency_seq_len', '?')})" if c else
               html.Span("not measured", className="muted", title="this job does not time its model: run an "
                         "Evaluate job with cost on its folder"))
        thr = (f"{c['throughput_tokens_per_s']:,.0f} ({c.get('throughput_batch_size', '?')}×"
               f"{c.get('latency_seq_len', '?')})" if c else html.Span("not measured", className="muted"))
        body.append([e["job"],
                     html.Span([html.Span("■ ", style={"color": colour.get(e["model"])}, className="swatch"),
                                html.Strong(e["role"]), html.Br(), html.Span(e["model"], className="muted"), html.Br(),
                                html.Span(conditions_text(e["conditions"]), className="muted cmp-conditions")]),
                     html.Span(f"{e['params']:,}" if e["params"] is not None else "—", className="cmp-params"),
                     lat, thr, *([_llama_cpp_cell(e, 1), _llama_cpp_cell(e, 0)] if cpp else []),
                     *[f"{ppl[k]:.2f}" if k in ppl else "—" for k in protos],
                     html.Button("Browse", id={"type": "cmp-browse", "row": f"{e['job']}:{e['role']}"},
                                 className="btn small", disabled=not Path(e["model"] or "/nonexistent").is_dir(),
                                 title=e["model"])])
    out: list = [html.P("Timings depend on the machine as much as on the model: compare rows measured with the same "
                        "device, threads and load.", className="muted hint"),
                 html.Div(table(head, body), id="compare-table", className="scroll-x")]
    if protos:
        out.append(dcc.Graph(id="compare-ppl", figure=_ppl_figure(rows, colour), config={"displaylogo": False}))
    comp = layer_comparison(rows)
    if comp["series"]:
        g = dict(config={"displaylogo": False})
        out += [html.H4("Per layer: dense next to pruned"),
                dcc.Graph(id="compare-params", figure=_bars(comp, "params_by_layer", "parameters", colour, outside=True), **g),
                html.Div([html.Div(dcc.Graph(id="compare-heads", figure=_bars(comp, "heads_by_layer",
                                                                             "attention units (kv heads) kept", colour), **g),
                                   className="half"),
                          html.Div(dcc.Graph(id="compare-channels", figure=_bars(comp, "channels_by_layer",
                                                                                "MLP channels kept", colour), **g),
                                   className="half")], className="row")]
    return out


def signature(state: AppState) -> list:
    """What the page is built from: the succeeded jobs (id, kind, finish time). The page is rebuilt only when
    it changes — re-rendering the table under the pointer each time the tab opened lost a Browse click."""
    return [[j.id, j.kind, j.finished] for j in state.registry.list(status="succeeded")
            if j.kind in ("prune", "recover", "eval", "export")]


def layout(state: AppState) -> html.Div:
    # the Browse message under a spinner: tracing a model takes seconds, and the page must say it is working
    return html.Div([card("Dense vs pruned vs recovered",
                          dcc.Loading(html.Div(id="compare-msg", className="msg"), type="circle",
                                      id="compare-loading", delay_show=150,
                                      overlay_style={"visibility": "visible", "opacity": 0.6}),
                          html.Div(content(state), id="compare-content")),
                     dcc.Store(id="compare-sig", data=signature(state))], id="compare-view")


def register(app, state: AppState) -> None:
    @app.callback(Output("compare-content", "children"), Output("compare-sig", "data"), Input("tabs", "value"),
                  State("compare-sig", "data"), prevent_initial_call=True)
    def refresh(tab, sig):
        if tab != "compare":
            return no_update, no_update
        new = signature(state)
        return (no_update, no_update) if new == sig else (content(state), new)

    @app.callback(Output("url", "href", allow_duplicate=True), Output("compare-msg", "children"),
                  Input({"type": "cmp-browse", "row": ALL}, "n_clicks"), prevent_initial_call=True)
    def browse(_clicks):
        from lorashear.errors import LorashearError

        from ..session import ensure_graph

        if not any(t["value"] for t in ctx.triggered):  # buttons re-created, not clicked
            return no_update, no_update
        key = ctx.triggered_id["row"]
        row = next((e for e in entries(state) if f"{e['job']}:{e['role']}" == key), None)
        if row is None:
            return no_update, no_update
        try:  # the message sits under a dcc.Loading: its spinner shows while this runs (seconds: a trace)
            job = ensure_graph(state, row["model"], meta=False, echo=lambda m: None, timeout_s=600)
        except LorashearError as exc:
            return no_update, html.Span(str(exc).splitlines()[0], className="error")
        state.model_job, state.model_error = job.id, None
        return "/", no_update
