"""What the app shows is true (issue 13), without a browser: each tab answers with its own model, a group lights
every op that reads or writes it, refusals are grouped in plain words, a job's result is a table and a clone
carries the job's parameters. The browser halves are in test_app_truth_browser.py."""
from __future__ import annotations

from dataclasses import replace

from dash import html

from lorashear.groups import Group
from lorashear.jobs.kinds import BUILTIN
from viz import model_view
from viz.app import model_of
from viz.views.graph import render
from viz.views.jobs import clone_defaults, result_table
from viz.views.overview import plain_reason, reason_summary


def _mv(state):
    return model_of(state, state.model_job)


def test_each_tab_gets_the_model_it_was_opened_on(app_state):
    """Browsing another model changes what a new page load shows, never what an open tab's callbacks answer with."""
    first = app_state.model_job
    mv = model_of(app_state, first)
    assert mv is not None and mv.job_id == first
    other = app_state.registry.create("graph", "lorashear.jobs.graph_job:run", {"source": "/elsewhere"},
                                      app_state.runs_dir)
    app_state.model_job = other.id  # another tab pressed "Browse" on a model whose job has not succeeded
    assert model_of(app_state, first) is mv  # the first tab still answers with its own model
    assert model_of(app_state, other.id) is None  # not a succeeded graph job: no model, not someone else's
    assert model_of(app_state, None) is None


def test_a_group_lights_every_op_that_reads_or_writes_it(app_state):
    mv = _mv(app_state)
    g = mv.group_by_id
    mlp, attn = g["model.layers.0.mlp:channels"], g["model.layers.0.self_attn:heads"]
    reads = {p: n for n, a in mv.graph.nodes(data=True) for p in a.get("params") or ()}
    down, o_proj = reads["model.layers.0.mlp.down_proj.weight"], reads["model.layers.0.self_attn.o_proj.weight"]
    assert down not in mlp.nodes and o_proj not in attn.nodes  # the consumers the group's own node list misses
    assert {down, reads["model.layers.0.mlp.gate_proj.weight"], reads["model.layers.0.mlp.up_proj.weight"]} <= \
        set(mv.group_ops[mlp.id])
    assert o_proj in mv.group_ops[attn.id] and set(attn.nodes) <= set(mv.group_ops[attn.id])
    assert mlp.id in mv.op_groups[down]  # the details panel says the same
    # the page: expanded to ops, the down_proj op carries the highlight class
    state = {"expanded": list(mv.hierarchy.initial_expanded) + ["m:model.layers.0", "m:model.layers.0.mlp"]}
    els = render(mv, state, {"groups": [mlp.id]})
    lit = {e["data"]["id"] for e in els if "g-sel" in e.get("classes", "")}
    assert f"o:{down}" in lit and "m:model.layers.0.self_attn" not in lit


def test_tied_weights_are_matched_under_either_name():
    import networkx as nx

    graph = nx.MultiDiGraph()
    graph.add_node("embedding", params=["lm_head.weight"])
    graph.add_node("other", params=["x.weight"])
    params = {"embed.weight": {"tied_to": "lm_head.weight"}, "lm_head.weight": {}, "x.weight": {}}
    from lorashear.groups import Member

    g = Group(id="model:hidden", kind="hidden", module="model", layer=None, n_units=4, params_per_unit=1,
              members=[Member("embed.weight", 1, "producer", [4], 0)], nodes=[], prunable=True, reason=None)
    assert model_view.group_op_map(graph, params, [g]) == {"model:hidden": ["embedding"]}


def test_refusals_are_grouped_in_plain_words_with_the_node_names_behind(app_state):
    mv = _mv(app_state)
    unprunable = [g for g in mv.groups if not g.prunable]
    summary = reason_summary(mv.groups)
    assert sum(len(e["groups"]) for e in summary) == len(unprunable)
    assert len(summary) < len(unprunable)  # one line per reason, not one per group
    head_dim = next(e for e in summary if e["kind"] == "head_dim")
    n_layers = mv.n_layers
    assert len(head_dim["groups"]) >= n_layers and head_dim["reason"].startswith("per-head size")
    assert "node" not in head_dim["reason"] and any("at node view" in c for c in head_dim["clauses"])
    # GQA, the issue's own wording; a clause nobody mapped stays itself (never dropped)
    gqa = "query heads share a kv head inside sdpa (enable_gqa) at node scaled_dot_product_attention"
    assert plain_reason(gqa)[1] == ("GQA: a query head shares its key/value head; remove the kv head with its "
                                    "queries instead")
    groups = [replace(unprunable[0], id=f"q{i}", kind="query_heads", reason=f"broadcast copies by expand at node e_{i}")
              for i in range(3)] + [replace(unprunable[0], id="w", kind="other", reason="something new at node n")]
    lines = reason_summary(groups)
    assert [(len(e["groups"]), e["reason"][:4]) for e in lines] == [(3, "GQA:"), (1, "some")]
    assert lines[0]["clauses"] == [f"broadcast copies by expand at node e_{i}" for i in range(3)]


def _text(component) -> str:
    if isinstance(component, (str, int, float)):
        return str(component)
    children = getattr(component, "children", None)
    if children is None:
        return ""
    if not isinstance(children, (list, tuple)):
        children = [children]
    return " ".join(_text(c) for c in children)


def test_a_result_is_a_table_with_readable_numbers():
    result = {"params": 5180672, "ppl": 12.3456789, "perplexity": [{"source": "docs", "ppl": 10.5},
                                                                  {"source": "code", "ppl": 20.25}],
              "cost": {"latency_ms": 1234.5}, "empty": None}
    t = result_table(result)
    assert isinstance(t, html.Table)
    text = _text(t)
    assert "5,180,672" in text and "12.35" in text and "1,234" in text and "—" in text
    inner = t.children[2].children[1].children  # the perplexity row: a table, one column per field
    assert isinstance(inner, html.Table) and "source" in _text(inner) and "code" in _text(inner)
    assert result_table({}) == "—"


def test_a_clone_carries_the_jobs_parameters_and_blanks():
    kind = BUILTIN["eval"]
    params = {"model": "/m", "data": "demo", "protocol": "both", "cost": False, "device": "cpu", "threads": 1}
    values = clone_defaults(kind, params)
    assert values["protocol"] == "both" and values["threads"] == 1 and values["cost"] is False
    assert values["max_tokens"] is None  # left blank by the job: blank again, not the kind's default
    assert set(values) == {p.name for p in kind.params}


def test_legends_sit_beside_the_plot_and_titles_top_left():
    """A legend above or below the plot sat on subplot titles, tick labels and the toolbar."""
    from viz.views.jobs import metrics_figure

    fig = metrics_figure({"loss": [(0, 1.0), (1, 0.5)], "sparsity_mlp": [(0, 0.1), (1, 0.2)],
                          "sparsity_attention": [(0, 0.0), (1, 0.3)]})
    assert fig.layout.legend.x > 1 and fig.layout.legend.xanchor == "left" and fig.layout.margin.r >= 150
    titles = [a for a in fig.layout.annotations if a.text in ("loss", "group sparsity (fraction of units removed)")]
    assert len(titles) == 2 and all(a.x == 0 and a.xanchor == "left" for a in titles)


def test_forms_prefill_the_model_of_the_tab(app_state, tmp_path):
    from viz.views.jobs import tab_defaults

    mv = _mv(app_state)
    assert tab_defaults(app_state, mv)["model"] == mv.source == tab_defaults(app_state, mv)["source"]
    config = tmp_path / "config.json"
    config.write_text("{}")
    meta = replace(mv, source=str(config), meta=True)  # a structure-only model: no folder to evaluate
    d = tab_defaults(app_state, meta)
    assert d["source"] == str(config) and d["meta"] is True and "model" not in d
