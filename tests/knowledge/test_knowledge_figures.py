"""Figures show the report's numbers: layer × head, layer × channel bin, per-layer bars, score distribution."""
import numpy as np
import plotly.graph_objects as go
import pytest

from lorashear.knowledge import select_unprunable
from viz.knowledge_figures import (OVERLAP_KINDS, channel_heatmap, colour_values, head_heatmap, layer_bars,
                                   query_head_heatmap, score_distribution, write_figures)


@pytest.fixture(scope="module")
def report(reports):
    return select_unprunable(reports["ablation"], 0.1)


def test_head_heatmap_is_layers_by_heads_with_the_report_scores(report):
    fig = head_heatmap(report, scale="linear")
    z = np.array(fig.data[0].z, dtype=float)
    assert z.shape == (6, 4)
    assert z[2] == pytest.approx(report.scores("model.layers.2.self_attn:heads"))
    assert np.array(fig.data[0].customdata, dtype=float)[2] == pytest.approx(z[2])  # the hover shows real values


def test_query_head_heatmap_sits_beside_the_kv_heads_with_the_query_head_scores(report):
    """The demo model is GQA (8 query / 4 kv heads): 2 query-head units per layer, scored apart."""
    fig = query_head_heatmap(report, scale="linear")
    z = np.array(fig.data[0].z, dtype=float)
    assert z.shape == (6, 2)
    assert z[4] == pytest.approx(report.scores("model.layers.4.self_attn:query_heads"))
    assert "scored apart" in fig.layout.title.text


def test_an_estimator_that_cannot_score_query_heads_says_so_in_their_heatmap(reports):
    fig = query_head_heatmap(reports["lora_taylor"])
    assert not fig.data and "does not score query heads" in fig.layout.annotations[0].text


def test_log_colour_scale_is_the_default_and_is_named_so_layer_0_does_not_flatten_the_rest(report):
    fig = head_heatmap(report)
    real = np.array(fig.data[0].customdata, dtype=float)
    assert np.array(fig.data[0].z, dtype=float) == pytest.approx(np.log10(np.maximum(real, real[real > 0].min())))
    assert "· log10" in fig.layout.title.text and "colour scale" in fig.layout.title.text
    assert "log10" in fig.data[0].colorbar.title.text
    # one cell 1000× the rest: linear puts every other cell in the bottom 1% of the scale, log spreads them
    z = np.array([[1000.0, 1.0], [2.0, 3.0]])
    lin, _, _ = colour_values(z, "linear")
    log, _, label = colour_values(z, "log")
    spread = lambda c: (np.sort(c.ravel())[-2] - c.min()) / (c.max() - c.min())  # noqa: E731
    assert spread(lin) < 0.01 and spread(log) > 0.1 and label == "log10"
    _, extra, label = colour_values(z, "clipped")
    assert extra["zmax"] < 1000 and "clipped" in label
    assert "≤0" in colour_values(np.array([[-1.0, 2.0]]), "log")[2]  # ablation deltas can be negative
    with pytest.raises(ValueError):
        colour_values(z, "sqrt")


def test_planned_units_are_outlined_on_the_heatmaps(report):
    planned = {"model.layers.1.self_attn:heads": [3], "model.layers.5.self_attn:query_heads": [0],
               "model.layers.0.mlp:channels": [70, 71], "model:hidden": [1]}
    heads = head_heatmap(report, planned=planned)
    (trace,) = [t for t in heads.data if t.name == "planned removal"]
    assert list(zip(trace.x, trace.y)) == [(3, 1)]
    (trace,) = [t for t in query_head_heatmap(report, planned=planned).data if t.name == "planned removal"]
    assert list(zip(trace.x, trace.y)) == [(0, 5)]
    ch = channel_heatmap(report, bins=10, planned=planned)  # 640 channels in bins of 64: 70, 71 are in bin 1
    (trace,) = [t for t in ch.data if (t.name or "").startswith("planned removal")]
    assert list(zip(trace.x, trace.y)) == [(64, 0)]
    assert not [t for t in head_heatmap(report).data if t.name == "planned removal"]


def test_channel_heatmap_sums_channels_into_bins(report):
    z = np.array(channel_heatmap(report, bins=10, scale="linear").data[0].z, dtype=float)
    assert z.shape == (6, 10)
    assert z[0, 0] == pytest.approx(report.scores("model.layers.0.mlp:channels")[:64].sum())


def test_layer_bars_stack_kinds_and_show_the_hidden_group_apart(report):
    fig = layer_bars(report)
    names = [t.name for t in fig.data]
    assert names == ["attention", "mlp", "hidden (whole network)"]  # query heads are part of the attention bars
    assert sum(fig.data[0].y) == pytest.approx(report.units.query("kind == 'attention'")["score"].sum())


def test_score_distribution_has_one_histogram_per_kind(report):
    fig = score_distribution(report)
    kinds = list(dict.fromkeys(report.units["kind"]))
    assert "query_heads" in kinds and OVERLAP_KINDS == ("query_heads",)
    assert [len(t.x) for t in fig.data] == [int((report.units["kind"] == k).sum()) for k in kinds]


def test_png_export_failure_falls_back_to_html_with_a_warning(report, tmp_path, monkeypatch):
    def broken(self, *a, **k):
        raise RuntimeError("no browser")

    monkeypatch.setattr(go.Figure, "write_image", broken)
    paths, warnings = write_figures(report, tmp_path, formats=("png",))
    assert sorted(p.suffix for p in paths) == [".html"] * 5
    assert len(warnings) == 1 and "no browser" in warnings[0]
