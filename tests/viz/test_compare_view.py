"""The Compare view's numbers without a browser, from a real prune job run in a worker: exact parameter counts of
the dense and the pruned model, per-layer sizes read from the folders, and the conditions of every timing."""
from __future__ import annotations

import json

import pytest

from lorashear.jobs import SUCCEEDED, submit, wait
from viz.views import compare as C

TINY_PRUNE = {"ratio": "0.2", "method": "magnitude", "steps": "2", "batch_size": "1", "seq_len": "32",
              "eval_tokens": "1024", "device": "cpu"}


@pytest.fixture(scope="module")
def pruned(traced, model_dir):
    from viz.session import make_state

    runs, _ = traced
    state = make_state(runs)
    job = submit(state.registry, "prune", {"model": str(model_dir), **TINY_PRUNE}, runs)
    done = wait(state.registry, job.id, timeout_s=600)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text()[-3000:])
    return done


def test_rows_carry_exact_parameters_and_conditions(app_state, pruned):
    rows = [e for e in C.entries(app_state) if e["job"] == pruned.id]
    roles = {e["role"].split(" (")[0]: e for e in rows}
    assert set(roles) == {"dense", "pruned"}
    assert roles["dense"]["params"] == pruned.result["params_before"]
    assert roles["pruned"]["params"] == pruned.result["params_after"]
    for e in rows:
        c = e["conditions"]
        assert c["device"] == "cpu" and c["threads"] >= 1 and c["tokens"] == 1024 and c["load"] is not None
        text = C.conditions_text(c)
        assert "thread" in text and "1,024 tokens/source" in text and "load" in text
    html_text = str(C.content(app_state))
    assert f"{pruned.result['params_before']:,}" in html_text and f"{pruned.result['params_after']:,}" in html_text


def test_per_layer_comparison_shows_every_removed_unit(app_state, pruned):
    rows = [e for e in C.entries(app_state) if e["job"] == pruned.id]
    comp = C.layer_comparison(rows)
    dense, small = comp["series"]
    assert dense["label"].startswith("dense") and small["label"].startswith("pruned")
    assert sum(dense["params_by_layer"]) == pruned.result["params_before"]
    assert sum(small["params_by_layer"]) == pruned.result["params_after"]
    plan = json.loads(open(pruned.artifacts["plan"]).read())
    for i, layer in enumerate(comp["layers"]):
        heads = len(plan["removal"].get(f"model.layers.{layer}.self_attn:heads", []))
        channels = len(plan["removal"].get(f"model.layers.{layer}.mlp:channels", []))
        assert dense["heads_by_layer"][i] - small["heads_by_layer"][i] == heads
        assert dense["channels_by_layer"][i] - small["channels_by_layer"][i] == channels
    fig = C._bars(comp, "heads_by_layer", "heads", C.colours(rows))
    assert [list(t.y) for t in fig.data] == [dense["heads_by_layer"], small["heads_by_layer"]]


TINY_RECOVER = {"tokens": "256", "round_steps": "1", "instruct_steps": "0", "eval_tokens": "1024"}


@pytest.fixture(scope="module")
def recovered(traced, pruned):
    from viz.session import make_state

    runs, _ = traced
    state = make_state(runs)
    job = submit(state.registry, "recover", {"pruned": pruned.artifacts["model"], **TINY_RECOVER,
                                             "batch_size": "1", "seq_len": "32", "val_tokens": "256"}, runs)
    done = wait(state.registry, job.id, timeout_s=600)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text()[-3000:])
    return done


def test_recovered_row_has_its_parameters_and_device(app_state, recovered):
    """The recovered model's row: its real parameter count (the model folder's sidecar) and the device the run
    recorded — not "—" and not the requested "auto"."""
    from lorashear.pruned_format import read_sidecar

    row = next(e for e in C.entries(app_state) if e["job"] == recovered.id)
    assert row["params"] == read_sidecar(recovered.artifacts["model"])["n_params"] > 0
    report = json.loads(open(recovered.artifacts["report"]).read())
    assert row["conditions"]["device"] == report["device"] != "auto"
    assert f"{row['params']:,}" in str(C.content(app_state))
    # the rounds it trained (the log's "round k"), not the count of evaluations (one more: round 0 is before training)
    trained = max(r["round"] for r in report["rounds"])
    assert row["role"] == f"recovered ({trained} training round{'s' if trained != 1 else ''})"
    assert len(report["rounds"]) == trained + 1


def test_one_colour_per_model_across_the_page(app_state, pruned, recovered):
    """Every chart gives a model the same colour, and different models different colours."""
    rows = C.entries(app_state)
    colour = C.colours(rows)
    assert len(set(colour.values())) == len(colour)
    page = C.content(app_state)
    figs = {}

    def walk(node):
        if getattr(node, "id", None) in ("compare-ppl", "compare-params", "compare-heads", "compare-channels"):
            figs[node.id] = node.figure
        for child in (getattr(node, "children", None) or []) if isinstance(getattr(node, "children", None), list) \
                else [getattr(node, "children", None)]:
            if child is not None and not isinstance(child, (str, int, float)):
                walk(child)

    for n in page:
        walk(n)
    assert set(figs) == {"compare-ppl", "compare-params", "compare-heads", "compare-channels"}
    assert figs["compare-ppl"].layout.title.text  # the perplexity chart says what it is
    by_name = {e["model"]: e for e in rows}
    seen: dict[str, set] = {}
    for fig in figs.values():
        for t in fig.data:
            seen.setdefault(t.marker.color, set()).add(t.name)
    # a colour is one model: each trace's colour is the colour of the model it names
    for e in rows:
        for fig in figs.values():
            for t in fig.data:
                if t.name == f"job {e['job']} · {e['role']}":
                    assert t.marker.color == colour[e["model"]]
    comp = C.layer_comparison(rows)
    for s in comp["series"]:
        for fig in (figs["compare-params"], figs["compare-heads"]):
            assert next(t for t in fig.data if t.name == s["label"]).marker.color == colour[s["model"]]
    assert by_name


def test_export_row_says_what_was_exported(app_state, model_dir, traced):
    """An Export of a saved plan is labelled by its plan file; one of hand-picked units as a hand selection."""
    from viz.session import make_state
    from viz.model_view import load
    from viz.views import prune as PV

    runs, _ = traced
    mv = load(app_state.registry.get(app_state.model_job))
    data, _, _ = PV.compute(app_state, mv, {"ratio": 0.1, "kinds": ["mlp"], "allocation": "global", "layers": None,
                                            "align": None, "knowledge": None, "gamma": None, "method": "magnitude"})
    plan = PV.save_plan(app_state, data)
    job = wait(app_state.registry, submit(app_state.registry, "export", {"model": str(model_dir), "plan": str(plan)},
                                          runs).id, timeout_s=600)
    assert job.status == SUCCEEDED, job.message
    row = next(e for e in C.entries(app_state) if e["job"] == job.id)
    assert row["role"] == f"exported: export of plan {plan.name}"
    assert row["params"] == job.result["params_after"]


def test_page_is_not_rebuilt_when_nothing_changed(app_state, pruned):
    """Opening the tab again with the same jobs keeps the page (a rebuild under the pointer lost Browse clicks);
    the Browse message sits under a spinner."""
    sig = C.signature(app_state)
    assert [pruned.id, "prune", pruned.finished] in sig and sig == C.signature(app_state)
    page = str(C.layout(app_state))
    assert "compare-loading" in page and "Loading" in page


# ------------------------------------------------------------------------------------------ llama.cpp figures
@pytest.fixture(scope="module")
def dense_and_pruned(tmp_path_factory):
    """A dense tiny LLaMA folder and a pruned folder whose sidecar names it as its source (no jobs, no worker)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import build

    from lorashear import compress, find_groups, save_pruned, trace

    root = tmp_path_factory.mktemp("cpp")
    model = build("llama")
    model.save_pretrained(root / "dense")
    small, report = compress(model, find_groups(trace(model)), {"model.layers.0.mlp:channels": list(range(16))})
    save_pruned(small, root / "pruned", report=report, provenance={"source": str(root / "dense"), "method": "test"})
    return root / "dense", root / "pruned"


def _succeeded(state, kind, params, result=None, artifacts=None):
    from lorashear.jobs import KINDS

    job = state.registry.create(kind, KINDS[kind].entry, params, state.runs_dir)
    state.registry.finish(job.id, SUCCEEDED, result=result or {}, artifacts=artifacts or {})
    return job


def _measured_export(state, model, tmp, name, pp, tg, threads=2):
    """An Export job's GGUF file with llama.cpp figures written by the library's own writer (given numbers)."""
    from lorashear.deploy_measure import LlamaCppFigures, write_figures

    gguf = tmp / f"{name}.gguf"
    gguf.write_bytes(name.encode())  # the Compare view never parses the file: it reads the figures beside it
    write_figures(gguf, LlamaCppFigures.of_runs(gguf, pp, tg, threads=threads, prompt_tokens=128, gen_tokens=32,
                                                llama_cpp_python="0.3.36", load_avg_after=1.5, dtype="f16"))
    return _succeeded(state, "export", {"model": str(model), "format": "gguf", "dtype": "f16", "measure": True},
                      artifacts={"gguf": str(gguf)})


@pytest.fixture
def cmp_state(tmp_path, dense_and_pruned):
    from viz.session import make_state

    state = make_state(tmp_path / "runs")
    dense, pruned = dense_and_pruned
    for m in (dense, pruned):
        _succeeded(state, "eval", {"model": str(m)})
    return state


def _cells(state):
    return {e["role"].split(" (")[0]: e for e in C.entries(state)}


def test_llama_cpp_figures_show_with_the_ratio_to_dense(cmp_state, dense_and_pruned, tmp_path):
    dense, pruned = dense_and_pruned
    _measured_export(cmp_state, dense, tmp_path, "dense", [100.0, 90.0, 110.0], [10.0, 9.0, 11.0])
    _measured_export(cmp_state, pruned, tmp_path, "pruned", [130.0, 120.0, 140.0], [15.0, 14.0, 16.0])
    rows = _cells(cmp_state)
    (d,), (p,) = rows["dense"]["llama_cpp"], rows["pruned"]["llama_cpp"]
    assert d["vs_dense"] is None and d["figures"].gen_tokens_per_s == 10.0
    assert p["vs_dense"] == pytest.approx((130 / 100, 15 / 10))
    page = str(C.content(cmp_state))
    assert "llama.cpp generation tok/s" in page and "llama.cpp prompt tok/s" in page
    assert "f16: 15.0 (1.50× dense)" in page and "f16: 130.0 (1.30× dense)" in page
    dense_cell = str(C._llama_cpp_cell(rows["dense"], 1))
    assert "f16: 10.0" in dense_cell and "×" not in dense_cell  # the dense model is the reference
    assert "2 threads · median of 3 · 128-token prompt, 32 generated · load 1.5 · llama-cpp-python 0.3.36" in page


def test_no_llama_cpp_columns_without_figures(cmp_state, dense_and_pruned, tmp_path):
    dense, _ = dense_and_pruned
    gguf = tmp_path / "unmeasured.gguf"
    gguf.write_bytes(b"x")
    _succeeded(cmp_state, "export", {"model": str(dense), "format": "gguf"}, artifacts={"gguf": str(gguf)})
    assert all(not e["llama_cpp"] for e in C.entries(cmp_state))
    assert "llama.cpp" not in str(C.content(cmp_state))


def test_no_ratio_across_different_conditions(cmp_state, dense_and_pruned, tmp_path):
    """A dense model timed on 1 thread is no reference for a pruned one timed on 2: figures, but no ratio."""
    dense, pruned = dense_and_pruned
    _measured_export(cmp_state, dense, tmp_path, "dense", [50.0], [5.0], threads=1)
    _measured_export(cmp_state, pruned, tmp_path, "pruned", [130.0], [15.0], threads=2)
    (p,) = _cells(cmp_state)["pruned"]["llama_cpp"]
    assert p["vs_dense"] is None and "× dense" not in str(C.content(cmp_state))


def test_figures_of_a_replaced_gguf_are_not_shown(cmp_state, dense_and_pruned, tmp_path):
    _, pruned = dense_and_pruned
    _measured_export(cmp_state, pruned, tmp_path, "pruned", [130.0], [15.0])
    assert _cells(cmp_state)["pruned"]["llama_cpp"]
    with open(tmp_path / "pruned.gguf", "ab") as fh:  # the file is replaced after it was measured
        fh.write(b" rewritten")
    assert not _cells(cmp_state)["pruned"]["llama_cpp"]
