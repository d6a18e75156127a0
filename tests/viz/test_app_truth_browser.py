"""What the page shows is true (issue 13), in a real (headless chromium) browser: two tabs on two models, scores
that appear when an Analyze job finishes, a dead server that says so, highlighting that lights every member op,
grouped refusal reasons, and the Jobs view's clone / result table / metrics / log that follows its newest line."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from test_app_browser import CY, _run_form, _started, cy_nodes, open_tab, until

from lorashear.jobs import SUCCEEDED, cancel, submit, wait
from viz.app import create_app, model_of
from viz.session import ensure_graph
from viz.views.overview import reason_summary

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")]
ROOT = Path(__file__).resolve().parents[2]


def _select_group(duo, gid):
    """Select one row of the groups grid, as a click would (the grid is virtualised: scroll to it first)."""
    duo.wait_for_element("#groups-grid .ag-row", timeout=30)
    until(lambda: duo.driver.execute_script(
        f"const api = dash_ag_grid.getApi('groups-grid'); const n = api && api.getRowNode({gid!r});"
        "if (n) api.ensureNodeVisible(n, 'middle'); return !!n;"), msg="grid api")
    duo.wait_for_element(f'.ag-row[row-id="{gid}"] .ag-cell[col-id="kind"]', timeout=20).click()
    duo.wait_for_contains_text("#sel-summary", gid, timeout=30)


def _text_of(duo, css) -> str:
    """The element's text, "" while the page is (re)loading and the element is gone or replaced."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return duo.driver.find_element("css selector", css).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _tap(duo, nid):
    duo.driver.execute_script(CY + f"cy.getElementById({nid!r}).emit('tap');")


def test_browsing_another_model_in_one_tab_leaves_the_other_tab_working(dash_duo, app_state, tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tiny = tmp_path / "tiny"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
                     ).save_pretrained(tiny)
    other = ensure_graph(app_state, tiny, meta=False, echo=lambda m: None, timeout_s=300)
    last = model_of(app_state, app_state.model_job).n_layers - 1  # a block the 1-layer model does not have
    assert last >= 1
    dash_duo.start_server(create_app(app_state))
    first = dash_duo.driver.current_window_handle
    open_tab(dash_duo, "Graph")
    until(lambda: f"m:model.layers.{last}" in cy_nodes(dash_duo), msg="the first tab's chain of blocks")
    # a second tab browses the other model (Jobs → select its graph job → Browse this model)
    dash_duo.driver.execute_script("window.open(arguments[0]);", dash_duo.server_url)
    dash_duo.driver.switch_to.window([h for h in dash_duo.driver.window_handles if h != first][0])
    open_tab(dash_duo, "Jobs")
    dash_duo.wait_for_element(f'#jobs-grid .ag-row[row-id="{other.id}"] .ag-cell[col-id="kind"]', timeout=30).click()
    until(lambda: dash_duo.find_element("#job-browse").is_enabled(), msg="browse enabled")
    dash_duo.find_element("#job-browse").click()
    until(lambda: str(tiny) in _text_of(dash_duo, "#model-line"), timeout=60, msg="second tab on the other model")
    assert app_state.model_job == other.id
    open_tab(dash_duo, "Jobs")  # its forms are for the model it browses now
    css = '#job-form input[id*=\'"name":"source"\']'

    def source_value():  # the form may re-render between finding the box and reading it: read it afresh
        try:
            return dash_duo.find_element(css).get_attribute("value")
        except (StaleElementReferenceException, NoSuchElementException):
            return None

    until(lambda: source_value() == str(tiny), timeout=30, msg=lambda: f"the form's source {source_value()!r}")
    # the first tab still browses its own model: expanding works, groups are its own (no "Unknown group")
    dash_duo.driver.switch_to.window(first)
    _tap(dash_duo, f"m:model.layers.{last}")
    until(lambda: f"m:model.layers.{last}.mlp" in cy_nodes(dash_duo), msg="expand in the first tab")
    open_tab(dash_duo, "Groups")
    _select_group(dash_duo, f"model.layers.{last}.mlp:channels")
    dash_duo.wait_for_contains_text("#units-panel", "down_proj", timeout=30)
    assert "Unknown group" not in dash_duo.find_element("#units-panel").text


def test_scores_appear_when_an_analyze_job_finishes(dash_duo, app_state, model_dir):
    ok, why = app_state.kinds["analyze"].availability()
    if not ok:
        pytest.skip(f"knowledge analysis not available: {why}")
    dash_duo.start_server(create_app(app_state))
    open_tab(dash_duo, "Groups")
    dash_duo.wait_for_element("#groups-grid .ag-row", timeout=30)
    job = submit(app_state.registry, "analyze", {"model": str(model_dir), "estimator": "magnitude"},
                 app_state.runs_dir, kinds=app_state.kinds)
    done = wait(app_state.registry, job.id, timeout_s=300)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text()[-2000:])
    # no reload: the open page picks the new report up
    dash_duo.wait_for_contains_text("#groups-note", f"report of Analyze job {job.id}", timeout=30)
    scored = ("const api = dash_ag_grid.getApi('groups-grid'); if (!api || !api.getColumn('score')) return null;"
              "const r = api.getRowNode('model.layers.0.mlp:channels'); return r && r.data.score;")
    assert until(lambda: dash_duo.driver.execute_script(scored), msg="score column with values") > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_server_is_shown_as_unreachable(dash_duo, traced, model_dir, tmp_path):
    runs, _ = traced
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen([sys.executable, "app.py", "--model", str(model_dir), "--runs", str(runs),
                               "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    # a job the registry says is running, in a process that stays alive (this test's), so no reconciliation ends it
    from lorashear.jobs import Registry

    reg = Registry(runs / "jobs.sqlite")
    running = reg.create("eval", "tests", {}, runs)
    reg.set_process(running.id, os.getpid(), None)
    reg.mark_running(running.id)
    try:
        until(lambda: "lorashear app on" in (tmp_path / "server.log").read_text() or server.poll() is not None,
              timeout=120, msg="app start")
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        dash_duo.driver.get(f"http://127.0.0.1:{port}/")
        dash_duo.wait_for_contains_text("#model-line", "LlamaForCausalLM", timeout=60)
        open_tab(dash_duo, "Jobs")
        until(lambda: dash_duo.find_elements(f"#jobs-grid .ag-row[row-id='{running.id}'] .job-running"), timeout=30,
              msg="the running job in the grid")
        time.sleep(10)  # more than the unreachable limit: a live server keeps the banner hidden
        assert not dash_duo.find_element("#server-down").is_displayed()
        server.kill()
        server.wait(10)
        banner = until(lambda: dash_duo.find_element("#server-down").is_displayed()
                       and dash_duo.find_element("#server-down"), timeout=30, msg="unreachable banner")
        assert "server is unreachable" in banner.text
        status = dash_duo.find_element(f"#jobs-grid .ag-row[row-id='{running.id}'] .job-running")
        shown = dash_duo.driver.execute_script(
            "return getComputedStyle(arguments[0]).fontStyle + '|' + getComputedStyle(arguments[0], '::after').content",
            status)
        assert shown == 'italic|" (last known)"', shown  # the job is not claimed to be running any more
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        log.close()
    out = (tmp_path / "server.log").read_text()
    assert "_dash-update-component" not in out, out[-2000:]  # no line per poll


def test_selecting_a_group_lights_its_consumer_ops(dash_duo, app_state):
    dash_duo.start_server(create_app(app_state))
    open_tab(dash_duo, "Groups")
    _select_group(dash_duo, "model.layers.0.self_attn:heads")
    open_tab(dash_duo, "Graph")
    until(lambda: "m:model.layers.0" in cy_nodes(dash_duo, "node.g-sel"), msg="block lit")
    _tap(dash_duo, "m:model.layers.0")
    until(lambda: "m:model.layers.0.self_attn" in cy_nodes(dash_duo), msg="block expanded")
    _tap(dash_duo, "m:model.layers.0.self_attn")
    lit = CY + "return cy.nodes().filter(n => (n.data('label') || '').startsWith({0!r})).map(n => n.hasClass('g-sel'));"
    assert until(lambda: dash_duo.driver.execute_script(lit.format("o_proj")), msg="o_proj op") == [True]
    assert dash_duo.driver.execute_script(lit.format("q_proj")) == [True]
    # an MLP group: down_proj too
    open_tab(dash_duo, "Groups")
    _select_group(dash_duo, "model.layers.0.mlp:channels")
    open_tab(dash_duo, "Graph")
    _tap(dash_duo, "m:model.layers.0.mlp")
    assert until(lambda: dash_duo.driver.execute_script(lit.format("down_proj")), msg="down_proj op") == [True]
    assert dash_duo.driver.execute_script(lit.format("o_proj")) == [False]


def test_refusal_reasons_are_one_line_each_with_names_behind_a_disclosure(dash_duo, app_state):
    mv = model_of(app_state, app_state.model_job)
    summary = reason_summary(mv.groups)
    dash_duo.start_server(create_app(app_state))
    dash_duo.wait_for_element("#overview-reasons", timeout=30)
    items = dash_duo.find_elements("#overview-reasons > li")
    assert len(items) == len(summary) < sum(not g.prunable for g in mv.groups)
    first = items[0]
    assert f"{len(summary[0]['groups'])} {summary[0]['kind']} groups: {summary[0]['reason']}" in first.text
    clause = summary[0]["clauses"][0]
    assert clause not in first.text  # node names are behind the disclosure …
    first.find_element("css selector", "summary").click()
    until(lambda: clause in first.text, msg="clauses shown")  # … one click away


def test_a_job_shows_a_result_table_metrics_a_following_log_and_can_be_cloned(dash_duo, app_state):
    dash_duo.start_server(create_app(app_state))
    _run_form(dash_duo, "Steps (test)", {"steps": 30, "delay": 0.2})
    _started(dash_duo)
    job = app_state.registry.get(int(dash_duo.find_element("#job-submit-msg").text.split()[2]))
    with open(job.log_path, "a") as fh:  # a chatty job: more lines than the log box shows
        fh.write("".join(f"line {i}\n" for i in range(150)))
    dash_duo.wait_for_contains_text("#job-log", "line 149", timeout=30)
    at_bottom = ("const el = document.getElementById('job-log');"
                 "return el.scrollHeight > el.clientHeight && el.scrollTop + el.clientHeight >= el.scrollHeight - 2;")
    until(lambda: dash_duo.driver.execute_script(at_bottom), timeout=10, msg="log scrolled to its newest line")
    dash_duo.wait_for_contains_text("#job-head", "succeeded", timeout=60)
    dash_duo.wait_for_element("#job-head table.result", timeout=10)
    assert "steps" in dash_duo.find_element("#job-head table.result").text
    dash_duo.wait_for_element("#job-metrics-box .main-svg", timeout=30)
    # clone: the form of its kind with its parameters, ready to run again
    until(lambda: dash_duo.find_element("#job-clone").is_enabled(), msg="clone enabled")
    dash_duo.find_element("#job-clone").click()
    dash_duo.wait_for_contains_text("#job-form-clone", f"job {job.id}", timeout=30)
    box = dash_duo.find_element('#job-form input[id*=\'"name":"steps"\']')
    assert box.get_attribute("value") == "30"
    assert dash_duo.find_element('#job-form input[id*=\'"name":"delay"\']').get_attribute("value") == "0.2"
    dash_duo.find_element("#job-submit").click()
    until(lambda: "Started job" in dash_duo.find_element("#job-submit-msg").text
          and str(job.id) not in dash_duo.find_element("#job-submit-msg").text.split()[2], msg="the clone runs")
    again = app_state.registry.get(int(dash_duo.find_element("#job-submit-msg").text.split()[2]))
    assert again.params == job.params
    cancel(app_state.registry, again.id)


def test_grid_numbers_have_thousands_separators_and_the_run_button_reads_on_hover(dash_duo, app_state):
    from selenium.webdriver.common.action_chains import ActionChains

    mv = model_of(app_state, app_state.model_job)
    g = mv.group_by_id["model.layers.0.mlp:channels"]
    dash_duo.start_server(create_app(app_state))
    open_tab(dash_duo, "Groups")
    cell = dash_duo.wait_for_element('.ag-row[row-id="model.layers.0.mlp:channels"] .ag-cell[col-id="params"]',
                                     timeout=30)
    assert g.n_units * g.params_per_unit >= 1000 and cell.text == f"{g.n_units * g.params_per_unit:,}"
    open_tab(dash_duo, "Jobs")
    run = dash_duo.wait_for_element("#job-submit", timeout=30)
    ActionChains(dash_duo.driver).move_to_element(run).perform()
    time.sleep(0.3)
    fg, bg = dash_duo.driver.execute_script(
        "const s = getComputedStyle(arguments[0]); return [s.color, s.backgroundColor];", run)
    assert fg == "rgb(255, 255, 255)" and bg not in ("rgb(255, 255, 255)", "rgb(238, 243, 250)"), (fg, bg)
