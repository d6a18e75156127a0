"""The Jobs view's curves from the metric names the prune and recover jobs record (no browser, no model)."""
from viz.views.jobs import metric_panels, metrics_figure, period_boundaries

# what prune_job records each step (LHSPG: warm-up 2 steps, 2 periods of 2 steps, then 1 step after)
PRUNE = {"loss": [(s, 3.0 - 0.1 * s) for s in range(1, 8)], "lr": [(s, 2e-4) for s in range(1, 8)],
         "removed_params": [(1, 0), (2, 0), (3, 10), (4, 20), (5, 30), (6, 40), (7, 40)],
         "sparsity_attention": [(s, 0.0) for s in range(1, 8)], "sparsity_mlp": [(s, s / 10) for s in range(1, 8)],
         "period": [(1, 0.0), (2, 0.0), (3, 1.0), (4, 1.0), (5, 2.0), (6, 2.0), (7, 0.0)]}
# what recover_job records per round: deviation from dense and mixture weight per source
RECOVER = {f"{k}_{s}": [(r * 25, 0.1 * r) for r in range(4)] for k in ("deviation", "weight")
           for s in ("code", "docs", "docstrings")}


def test_period_boundaries_come_from_the_period_metric():
    assert period_boundaries(PRUNE) == [(3, "period 1"), (5, "period 2"), (7, "period 2 ends")]
    assert period_boundaries(RECOVER) == []


def test_related_metrics_share_a_panel():
    titles = [t for t, _ in metric_panels(PRUNE)]
    assert titles == ["loss", "removed_params", "group sparsity (fraction of units removed)"]
    panels = dict(metric_panels(RECOVER))
    assert panels["deviation from dense (loss)"] == ["deviation_code", "deviation_docs", "deviation_docstrings"]
    assert panels["mixture weights"] == ["weight_code", "weight_docs", "weight_docstrings"]


def test_figure_draws_every_curve_and_marks_each_boundary():
    fig = metrics_figure(PRUNE)
    assert sorted(t.name for t in fig.data) == ["loss", "removed_params", "sparsity_attention", "sparsity_mlp"]
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert sorted({s.x0 for s in lines}) == [3, 5, 7]  # one dashed line per boundary on every panel
    assert len(metrics_figure(RECOVER).data) == 6


def test_each_legend_sits_beside_its_panel_and_period_labels_clear_the_curves():
    fig = metrics_figure(RECOVER)  # two panels with three lines each: two legends, each at its panel's top
    by_legend = {}
    for t in fig.data:
        by_legend.setdefault(t.legend or "legend", set()).add(t.name.split("_")[0])
    assert sorted(by_legend.values(), key=sorted) == [{"deviation"}, {"weight"}]
    tops = sorted(fig.layout[k].y for k in by_legend)
    assert tops == sorted(fig.layout[f"yaxis{'' if i == 1 else i}"].domain[1] for i in (1, 2))
    fig = metrics_figure(PRUNE)
    labels = [a for a in fig.layout.annotations if a.hovertext and "period" in a.hovertext]
    assert [a.text for a in labels] == ["P1", "P2", "end"]
    # above the top panel, in the margin, upright: not over the loss curve
    assert all(a.yref == "paper" and a.y == 1.0 and a.yanchor == "bottom" and not a.textangle for a in labels)


def test_job_details_say_where_it_ran_and_link_artifact_files(tmp_path):
    from lorashear.jobs import Registry
    from viz.views.jobs import artifact_list, runs_on

    reg = Registry(tmp_path / "jobs.sqlite")
    job = reg.create("eval", "x:y", {}, tmp_path)
    report = tmp_path / "report.json"
    report.write_text("{}")
    reg.set_artifacts(job.id, {"report": str(report), "model": str(tmp_path)})
    reg.set_task(job.id, "task-1")
    reg.mark_running(job.id, worker="gpu-box:4242")
    j = reg.get(job.id)
    assert runs_on(j) == "worker gpu-box:4242"
    links = [c for li in artifact_list(j).children if isinstance(li.children, list) for c in li.children
             if hasattr(c, "href")]
    # the file links to its download; the folder (a model) is offered as one zip
    assert sorted(a.href for a in links) == [f"/archive/{job.id}/model", f"/artifact/{job.id}/report"]
