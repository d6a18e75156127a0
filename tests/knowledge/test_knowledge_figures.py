"""Figures show the report's numbers: layer × head, layer × channel bin, per-layer bars, score distribution."""
import numpy as np
import plotly.graph_objects as go
import pytest

from lorashear.knowledge import select_unprunable
from viz.knowledge_figures import channel_heatmap, head_heatmap, layer_bars, score_distribution, write_figures


@pytest.fixture(scope="module")
def report(reports):
    return select_unprunable(reports["ablation"], 0.1)


def test_head_heatmap_is_layers_by_heads_with_the_report_scores(report):
    z = np.array(head_heatmap(report).data[0].z, dtype=float)
    assert z.shape == (6, 4)
    assert z[2] == pytest.approx(report.scores("model.layers.2.self_attn:heads"))


def test_channel_heatmap_sums_channels_into_bins(report):
    z = np.array(channel_heatmap(report, bins=10).data[0].z, dtype=float)
    assert z.shape == (6, 10)
    assert z[0, 0] == pytest.approx(report.scores("model.layers.0.mlp:channels")[:64].sum())


def test_layer_bars_stack_kinds_and_show_the_hidden_group_apart(report):
    fig = layer_bars(report)
    names = [t.name for t in fig.data]
    assert names == ["attention", "mlp", "hidden (whole network)"]
    assert sum(fig.data[0].y) == pytest.approx(report.units.query("kind == 'attention'")["score"].sum())


def test_score_distribution_has_one_histogram_per_kind(report):
    fig = score_distribution(report)
    assert [len(t.x) for t in fig.data] == [int((report.units["kind"] == k).sum()) for k in ("hidden", "attention", "mlp")]


def test_png_export_failure_falls_back_to_html_with_a_warning(report, tmp_path, monkeypatch):
    def broken(self, *a, **k):
        raise RuntimeError("no browser")

    monkeypatch.setattr(go.Figure, "write_image", broken)
    paths, warnings = write_figures(report, tmp_path, formats=("png",))
    assert sorted(p.suffix for p in paths) == [".html"] * 4
    assert len(warnings) == 1 and "no browser" in warnings[0]
