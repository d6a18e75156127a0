"""`lorashear analyze`: writes a report and figures, prints the per-layer summary; user mistakes exit 2, no traceback."""
import subprocess
import sys

import pytest

from lorashear.cli import main
from lorashear.knowledge import load_report


def test_analyze_command_writes_report_summary_and_figures(tmp_path, capsys):
    out = tmp_path / "rep.json"
    rc = main(["analyze", "demo", "--estimator", "magnitude", "--gamma", "0.25", "--select", "layer", "--out", str(out),
               "--figures", str(tmp_path / "figs"), "--figure-format", "html", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0
    rep = load_report(out)
    assert rep.meta["estimator"] == "magnitude" and rep.meta["selection"]["level"] == "layer"
    # the demo model is GQA: its query heads are printed apart, outside the total
    assert printed.splitlines()[0].split() == ["layer", "attention", "mlp", "total", "share", "unprunable", "(query_heads)"]
    assert "model:hidden" in printed and "unprunable: top 0.25 of layers (2 of 6)" in printed
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "knowledge_channels.html", "knowledge_distribution.html", "knowledge_heads.html", "knowledge_layers.html",
        "knowledge_query_heads.html"]


def test_gamma_out_of_range_exits_2_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lorashear", "analyze", "demo", "--gamma", "1.5", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "--gamma: must be in [0, 1), got 1.5" in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("extra,message", [
    (["--data", "{short}", "--seq-len", "128"], "fewer than seq_len=128"),
    (["--estimator", "ablation", "--variant", "second"], "--variant: does not apply to estimator ablation (it applies to: taylor)"),
    (["--estimator", "taylor", "--variant", "third"], "--variant: unknown 'third'; choose one of first, second, vector"),
    (["--estimator", "ablation", "--bins", "mlp=0"], "--bins: expected KIND=N"),
])
def test_bad_input_exits_2_with_one_error_line(tmp_path, capsys, extra, message):
    short = tmp_path / "short.txt"
    short.write_text("x = 1")
    args = ["analyze", "demo", "--out", str(tmp_path / "r.parquet"), "--no-progress"] + [a.format(short=short) for a in extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lorashear analyze: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err
    assert not (tmp_path / "r.parquet").exists()
