"""The Jobs tab's pieces without a browser: readable result labels, the grid's highlighted row following the job
shown, and no "Not available yet" heading over an empty list."""
from __future__ import annotations

from dash import no_update

from viz.views import jobs as J


def test_result_keys_are_words():
    assert J.result_label("ppl_long_after") == "perplexity (long) after"
    assert J.result_label("ppl_short_before") == "perplexity (short) before"
    assert J.result_label("params_before") == "parameters before"
    assert J.result_label("load_avg_1m") == "load average (1 min)"
    table = J.result_table({"ppl_long_after": 12.5, "params_after": 1000})
    text = str(table)
    assert "perplexity (long) after" in text and "parameters after" in text and "1,000" in text
    assert "title='ppl_long_after'" in text  # the raw key stays findable


def test_grid_highlight_follows_the_job_shown():
    # a job shown from elsewhere (a submit, the Prune tab, Clone): the grid highlights its row
    assert J.sync_selection("job-sel", [{"id": 3}], 7) == (no_update, {"ids": ["7"]})
    assert J.sync_selection("job-sel", None, 7) == (no_update, {"ids": ["7"]})
    assert J.sync_selection("job-sel", [{"id": 7}], 7) == (no_update, no_update)  # already agree: no loop
    # a click in the grid picks the job
    assert J.sync_selection("jobs-grid", [{"id": 5}], 7) == (5, no_update)
    assert J.sync_selection("jobs-grid", [{"id": 7}], 7) == (no_update, no_update)
    assert J.sync_selection("jobs-grid", [], 7) == (no_update, no_update)


def test_no_empty_not_available_heading(app_state):
    from lorashear.jobs import KINDS
    from viz.session import make_state

    state = make_state(app_state.runs_dir, kinds=dict(KINDS))  # every built-in kind runs today
    assert all(k.availability()[0] for k in state.kinds.values())
    assert J._unavailable_section(state) == []
    assert "Not available yet" not in str(J.layout(state))


def test_grid_columns_hold_their_header_words():
    """No header breaks mid-word ("Prunabl e"): every column is at least as wide as its longest header word."""
    from viz.components import HEADER_PX_EXTRA, HEADER_PX_PER_CHAR
    from viz.views.groups import COLUMNS, SCORE_COLUMNS

    for c in COLUMNS + SCORE_COLUMNS + J.JOB_COLUMNS:
        word = max(str(c.get("headerName") or c["field"]).split(), key=len)
        width = c.get("width") or c.get("minWidth")
        assert width >= HEADER_PX_PER_CHAR * len(word) + HEADER_PX_EXTRA, c
    created = next(c for c in J.JOB_COLUMNS if c["field"] == "created")
    assert created["width"] >= 8 * len("2026-12-07 01:48:39")  # the whole time, seconds included


def test_method_specific_fields_follow_the_method(app_state):
    """The prune form's LHSPG-only field (ε) shows for lhspg and hides for magnitude; a value left in a hidden
    field is not submitted (it would be refused as not applying)."""
    kind = app_state.kinds["prune"]
    only = [p for p in kind.params if p.methods]
    assert only and all("lhspg" in p.methods for p in only)
    boxes = {f.id["name"]: f for f in J.form_fields(kind, {"method": "lhspg"})}
    assert boxes[only[0].name].style == {}
    boxes = {f.id["name"]: f for f in J.form_fields(kind, {"method": "magnitude"})}
    assert boxes[only[0].name].style == {"display": "none"} and boxes["ratio"].style == {}
    assert J.applicable(kind, {"method": "magnitude", only[0].name: "0.1", "ratio": "0.2"}) == \
        {"method": "magnitude", "ratio": "0.2"}
    assert J.applicable(kind, {"method": "lhspg", only[0].name: "0.1"}) == {"method": "lhspg", only[0].name: "0.1"}
