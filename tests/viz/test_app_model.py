"""Hierarchy, layout and model views without a browser, on a real traced model."""
from viz import hierarchy as H
from viz.graph_layout import elements
from viz.model_view import load
from viz.views.jobs import submit_form


def _mv(app_state):
    return load(app_state.registry.get(app_state.model_job))


def test_collapsed_view_is_the_chain_of_blocks(app_state):
    mv = _mv(app_state)
    h = mv.hierarchy
    vis = H.visible(h, set(h.initial_expanded))
    n_layers = mv.opgraph.config["num_hidden_layers"]
    blocks = [v for v in vis if v.startswith("m:") and H.layer_of(h.nodes[v].module) is not None]
    assert len(blocks) == n_layers
    assert len(vis) < n_layers + 15  # blocks plus a handful of embedding/norm/head/io nodes
    # every op is inside exactly one visible node, and all edges connect visible nodes
    exp = set(h.initial_expanded)
    assert all(H.visible_of(h, op, exp) in vis for op in mv.graph.nodes)
    els = elements(h, mv.graph, h.initial_expanded)
    ids = {e["data"]["id"] for e in els if "source" not in e["data"]}
    assert ids == set(vis)
    assert all(e["data"]["source"] in ids and e["data"]["target"] in ids for e in els if "source" in e["data"])
    assert all("position" in e for e in els if "source" not in e["data"])


def test_expand_to_ops_then_collapse(app_state):
    mv = _mv(app_state)
    h = mv.hierarchy
    block = next(n for n in H.visible(h, set(h.initial_expanded)) if h.nodes[n].module.endswith("layers.0"))
    exp = H.expand(h, list(h.initial_expanded), block, cap=1000, deep=True)
    vis = H.visible(h, set(exp))
    ops_in_block = {o for o in mv.graph.nodes if mv.graph.nodes[o].get("module", "").startswith(h.nodes[block].module + ".")
                    or mv.graph.nodes[o].get("module") == h.nodes[block].module}
    assert {f"o:{o}" for o in ops_in_block} <= set(vis)
    assert any(mv.graph.nodes[o]["op"] == "scaled_dot_product_attention" for o in ops_in_block)
    back = H.collapse(h, exp, block)
    assert H.visible(h, set(back)) == H.visible(h, set(h.initial_expanded))


def test_cap_collapses_the_oldest_expansion(app_state):
    mv = _mv(app_state)
    h = mv.hierarchy
    blocks = [n for n in H.visible(h, set(h.initial_expanded)) if H.layer_of(h.nodes[n].module) is not None]
    exp = H.expand(h, list(h.initial_expanded), blocks[0], cap=10_000, deep=True)
    one = len(H.visible(h, set(exp)))
    exp = H.expand(h, exp, blocks[1], cap=one + 5, deep=True)  # room for one expanded block only
    assert blocks[0] not in exp and blocks[1] in exp
    assert len(H.visible(h, set(exp))) <= one + 5


def test_selected_group_highlights_the_nodes_holding_its_ops(app_state):
    mv = _mv(app_state)
    h = mv.hierarchy
    g = next(g for g in mv.groups if g.kind == "mlp" and g.layer == 0)
    els = elements(h, mv.graph, h.initial_expanded, highlight=set(g.nodes))
    lit = {e["data"]["id"] for e in els if "g-sel" in e.get("classes", "")}
    assert lit == {H.visible_of(h, o, set(h.initial_expanded)) for o in g.nodes}
    assert any(h.nodes[n].module.endswith("layers.0") for n in lit)


def test_group_rows_and_layer_params(app_state):
    mv = _mv(app_state)
    rows = mv.group_rows()
    assert len(rows) == len(mv.groups) and {r["id"] for r in rows} == set(mv.group_by_id)
    per = mv.layer_params()
    assert sum(sum(v.values()) for v in per.values()) == mv.n_params
    assert per[0]["mlp"] > 0 and per[0]["attention"] > 0


def test_form_rejects_invalid_parameters_with_messages(app_state):
    msg, errs, job = submit_form(app_state, "steps", ["steps", "delay"], ["abc", "-1"])
    assert job is None and "Fix the marked fields" in msg.children
    assert errs == ["must be a number", "must be in [0, 60], got -1"]
    msg, errs, job = submit_form(app_state, "graph", ["source", "meta"], ["/no/such/model", []])
    assert job is None and errs[0] == "/no/such/model does not exist"
    # a kind whose library call has not landed is refused with its reason (every built-in kind runs today)
    from lorashear.jobs.kinds import JobKind

    app_state.kinds["future"] = JobKind("future", "Future", "a kind without an entry point",
                                        unavailable_reason="not available yet: lorashear.future has not landed")
    msg, errs, job = submit_form(app_state, "future", [], [])
    assert job is None and "not available yet" in msg.children
    msg, errs, job = submit_form(app_state, "export", ["model", "units", "plan", "verify"],
                                 [str(app_state.form_defaults.get("model", "/")), "{oops", "", ["verify"]])
    assert job is None and errs[1].startswith("not valid JSON")


def test_views_say_what_is_not_available_without_results(tmp_path):
    from viz.session import make_state
    from viz.views import compare, knowledge

    fresh = make_state(tmp_path / "runs")  # no jobs at all
    assert "run an analysis" in str(knowledge.layout(fresh))
    assert "Not available yet" in str(compare.layout(fresh))


def test_an_expanded_module_is_a_box_around_its_contents(app_state):
    from viz.graph_layout import BOX, viewport

    mv = _mv(app_state)
    h = mv.hierarchy
    block = next(n for n in H.visible(h, set(h.initial_expanded)) if h.nodes[n].module.endswith("layers.0"))
    exp = H.expand(h, list(h.initial_expanded), block, cap=1000, deep=True)
    els = elements(h, mv.graph, exp)
    boxes = {e["data"]["id"]: e for e in els if "box" in e.get("classes", "")}
    assert BOX + block in boxes and not any(BOX + c in boxes for c in h.initial_expanded)  # no frame around all
    drawn = {e["data"]["id"]: e["data"] for e in els if "position" in e}
    inside = [d for nid, d in drawn.items() if block in H.ancestors(h, nid)]
    assert inside and all(d.get("parent", "").startswith(BOX) for d in inside)
    attn = next(b for b in boxes if b.endswith("layers.0.self_attn"))  # nested: the attention box sits in the block's
    assert boxes[attn]["data"]["parent"] == BOX + block
    assert all("parent" not in d for nid, d in drawn.items() if block not in H.ancestors(h, nid))
    pan, zoom = viewport(els)  # boxes have no position of their own: the viewport ignores them
    assert 0.5 < zoom <= 1.1


def test_a_long_overview_is_wrapped_into_columns_that_fit_the_canvas():
    """40 blocks: every block on screen at once, in reading order (down each column, then the next column), at a
    zoom where the overview's 15 px labels are at least 6 px."""
    import lorashear
    from transformers import LlamaConfig

    from lorashear.loading import model_from_config
    from viz.graph_layout import CANVAS, viewport

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=40,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    og = lorashear.trace(model_from_config(cfg, seed=0))
    h = H.build(og.graph, lorashear.module_tree(og))
    els = elements(h, og.graph, h.initial_expanded)
    pos = {e["data"]["id"]: (e["position"]["x"], e["position"]["y"]) for e in els if "position" in e}
    blocks = [f"m:model.layers.{i}" for i in range(40)]
    assert len({pos[b][0] for b in blocks}) >= 3  # several columns
    reading = sorted(blocks, key=lambda b: (pos[b][0], pos[b][1]))
    assert reading == blocks
    pan, zoom = viewport(els)
    assert zoom * 15 >= 6
    for x, y in pos.values():  # every node inside the canvas
        assert 0 <= pan["x"] + zoom * x <= CANVAS[0] and 0 <= pan["y"] + zoom * y <= CANVAS[1]
    assert any("wrap" in e.get("classes", "") for e in els if "source" in e["data"])  # column-to-column edges faint


def test_pruned_model_tab_shows_real_widths(app_state, model_dir):
    """A pruned model keeps its dense config ("MLP size 640"); the Model tab shows each layer's real heads and
    channels (the traced module shapes), and the summary says the range, not the config value."""
    from lorashear.jobs import SUCCEEDED, submit, wait
    from viz.session import ensure_graph
    from viz.views import overview as O
    from viz.views import prune as PV

    mv = _mv(app_state)
    data, errors, _ = PV.compute(app_state, mv, {"ratio": 0.3, "kinds": ["attention", "mlp"], "allocation": "global",
                                                 "layers": None, "align": None, "knowledge": None, "gamma": None,
                                                 "method": "magnitude"})
    assert data is not None, errors
    plan = PV.save_plan(app_state, data)
    job = wait(app_state.registry, submit(app_state.registry, "export", {"model": str(model_dir), "plan": str(plan)},
                                          app_state.runs_dir).id, timeout_s=600)
    assert job.status == SUCCEEDED, job.message
    small = load(ensure_graph(app_state, job.artifacts["model"], meta=False, echo=lambda m: None, timeout_s=600))
    dense = {r["layer"]: r for r in mv.layer_sizes()}
    removal = data["plan"]["removal"]
    sizes = small.layer_sizes()
    for r in sizes:
        cut = len(removal.get(f"model.layers.{r['layer']}.mlp:channels", []))
        assert r["mlp"] == dense[r["layer"]]["mlp"] - cut
        cut = len(removal.get(f"model.layers.{r['layer']}.self_attn:heads", []))
        assert r["kv_heads"] == dense[r["layer"]]["kv_heads"] - cut
    widths = [r["mlp"] for r in sizes]
    assert len(set(widths)) > 1  # a global plan leaves layers of different widths
    text = str(O.summary(small))
    config_mlp = small.opgraph.config["intermediate_size"]
    assert f"{min(widths)}–{max(widths)} per layer (config says {config_mlp})" in text
    table_text = str(O.sizes_table(small))
    assert all(f"{w:,}" in table_text for w in widths)
