"""The Knowledge view's logic without a browser: only the browsed model's reports, a heatmap click selects the
clicked unit of the browsed model's group (never another model's), and the plan shown is this model's."""
import pytest
from transformers import AutoModelForCausalLM

from lorashear.jobs import SUCCEEDED
from lorashear.knowledge import analyze
from viz import model_view
from viz.views import knowledge
from viz.views.groups import unit_of_selection
from viz.session import make_state


def _record(state, report, params):
    """A finished Analyze job in the registry whose artifact is ``report`` (written here, in-process)."""
    job = state.registry.create("analyze", "lorashear.jobs.analyze_job:run", params, state.runs_dir)
    path = report.save(job.out_dir / "knowledge.parquet")
    state.registry.mark_running(job.id)
    state.registry.finish(job.id, SUCCEEDED, artifacts={"report": str(path)})
    return state.registry.get(job.id)


@pytest.fixture(scope="module")
def browsed(traced):
    from lorashear.jobs import Registry

    runs, job_id = traced
    return model_view.load(Registry(runs / "jobs.sqlite").get(job_id))


@pytest.fixture
def two_reports(tmp_path, browsed, model_dir):
    """A fresh registry with a magnitude report of the browsed model and a newer one of another model whose
    job names the *same* path (so a path comparison cannot tell them apart; the stored identity can)."""
    from tests.tiny_models import build, traced as tiny_traced

    state = make_state(tmp_path / "runs")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    mine = _record(state, analyze(model, None, estimator="magnitude", groups=browsed.groups, source=str(model_dir)),
                   {"model": str(model_dir), "estimator": "magnitude"})
    _, _, groups = tiny_traced("llama-gqa")
    other = _record(state, analyze(build("llama-gqa"), None, estimator="magnitude", groups=groups, source=str(model_dir)),
                    {"model": str(model_dir), "estimator": "magnitude"})
    return state, mine, other


def test_only_reports_of_the_browsed_model_are_listed(two_reports, browsed):
    state, mine, other = two_reports
    jobs, others = knowledge.reports_of(state, browsed)
    assert [j.id for j in jobs] == [mine.id] and others == 1
    page = str(knowledge.layout(state, browsed))
    assert f"job {mine.id}" in page and f"job {other.id}" not in page
    from viz.views.prune import knowledge_options

    assert [o["value"] for o in knowledge_options(state, browsed)] == [mine.artifacts["report"]]


def test_no_report_of_this_model_is_said_plainly(tmp_path, browsed, model_dir):
    from tests.tiny_models import build, traced as tiny_traced

    state = make_state(tmp_path / "runs")
    _, _, groups = tiny_traced("llama-gqa")
    _record(state, analyze(build("llama-gqa"), None, estimator="magnitude", groups=groups), {"model": "/elsewhere"})
    page = str(knowledge.layout(state, browsed))
    assert "No knowledge report of this model" in page and "1 report of other models is not shown" in page
    assert "No model is being browsed" in str(knowledge.layout(state, None))


def test_a_heatmap_click_selects_the_clicked_unit_of_the_browsed_model(two_reports, browsed):
    state, mine, other = two_reports
    click = lambda x, y: {"points": [{"x": x, "y": y, "curveNumber": 0}]}  # noqa: E731 — what plotly sends
    assert knowledge.group_of_click(state, mine.id, click(3, 2), "attention", browsed) == ("model.layers.2.self_attn:heads", 3)
    assert knowledge.group_of_click(state, mine.id, click(1, 5), "query_heads", browsed) == \
        ("model.layers.5.self_attn:query_heads", 1)
    assert knowledge.group_of_click(state, mine.id, click(64, 0), "mlp", browsed) == ("model.layers.0.mlp:channels", 64)
    assert knowledge.group_of_click(state, mine.id, click(9, 2), "attention", browsed) is None  # no head 9
    # the other model's report names groups this graph also has ('model.layers.1.self_attn:heads'): still nothing
    assert knowledge.group_of_click(state, other.id, click(1, 1), "attention", browsed) is None
    assert knowledge.group_of_click(state, mine.id, click(1, 1), "attention", None) is None


def test_the_units_panel_shows_the_clicked_unit_not_unit_0():
    gid = "model.layers.2.self_attn:heads"
    sel = {"groups": [gid], "node": None, "unit": {"group": gid, "unit": 3}}
    assert unit_of_selection(sel, "sel", 0) == 3
    assert unit_of_selection(sel, "unit-index", 1) == 1  # typing a unit afterwards still works
    assert unit_of_selection({"groups": [gid]}, "sel", 2) == 2


def test_only_this_models_plan_is_outlined(browsed):
    plan = {"model_job": browsed.job_id, "plan": {"removal": {"model.layers.0.mlp:channels": [1, 2]}}}
    assert knowledge.planned_units(plan, browsed) == {"model.layers.0.mlp:channels": [1, 2]}
    assert knowledge.planned_units({**plan, "model_job": browsed.job_id + 1000}, browsed) is None
    assert knowledge.planned_units(None, browsed) is None


def test_per_layer_chart_keeps_the_hidden_group_on_its_own_axis(two_reports):
    """The hidden group's total (the whole network's residual channels) has a panel and axis of its own, so it
    does not flatten the per-layer bars."""
    from lorashear.knowledge import load_report
    from viz.knowledge_figures import layer_bars

    state, mine, _ = two_reports
    fig = layer_bars(load_report(mine.artifacts["report"]))
    wide = [t for t in fig.data if "whole network" in t.name]
    layered = [t for t in fig.data if "whole network" not in t.name]
    assert wide and layered
    assert {(t.xaxis, t.yaxis) for t in wide} == {("x2", "y2")}
    assert {(t.xaxis or "x", t.yaxis or "y") for t in layered} == {("x", "y")}
