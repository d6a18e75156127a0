"""The app in a real (headless chromium) browser: dash_duo drives the page, the jobs run in real workers."""
import time

import psutil
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from lorashear.jobs import SUCCEEDED, cancel, reap, submit, wait
from viz.app import create_app
from viz.session import make_state

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")]

# cytoscape.js registers itself on its container (research §3.6); tests only, never app code
CY = ("const host = [document.getElementById('cy'), ...document.querySelectorAll('#cy div')]"
      ".find(d => d && d._cyreg && d._cyreg.cy); if (!host) return null; const cy = host._cyreg.cy;")


def cy_nodes(duo, selector="node"):
    return duo.driver.execute_script(CY + f"return cy.$({selector!r}).map(n => n.id());") or []


def until(cond, timeout=45, step=0.1, msg="condition"):
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {msg() if callable(msg) else msg}")


def open_tab(duo, label):
    tab = until(lambda: next((t for t in duo.find_elements("#tabs > div, #tabs [role=tab]")
                              if t.text.strip() == label), None), msg=f"tab {label}")
    tab.click()


def test_page_loads_with_the_model_overview(dash_duo, app_state):
    dash_duo.start_server(create_app(app_state))
    dash_duo.wait_for_contains_text("#overview", "LlamaForCausalLM", timeout=20)
    dash_duo.wait_for_element("#overview-params .main-svg", timeout=20)
    assert "Groups by kind" in dash_duo.find_element("#overview").text
    open_tab(dash_duo, "Groups")  # AG Grid, cytoscape and plotly are all loaded by now
    dash_duo.wait_for_element("#groups-grid .ag-row", timeout=20)
    urls = dash_duo.driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    outside = [u for u in urls if not u.startswith(dash_duo.server_url)]
    assert urls and not outside, outside  # no CDN: every script, style and font is served by the app
    assert dash_duo.get_logs() == [] or all("wheel" in e["message"] for e in dash_duo.get_logs())


def test_expanding_a_block_shows_its_ops(dash_duo, app_state):
    dash_duo.start_server(create_app(app_state))
    open_tab(dash_duo, "Graph")
    until(lambda: "m:model.layers.0" in cy_nodes(dash_duo), msg="collapsed chain of blocks")
    before = cy_nodes(dash_duo)
    assert not any(n.startswith("m:model.layers.0.") for n in before)
    dash_duo.driver.execute_script(CY + "cy.getElementById('m:model.layers.0').emit('tap');")
    until(lambda: "m:model.layers.0.self_attn" in cy_nodes(dash_duo), msg="block expanded to modules")
    dash_duo.wait_for_contains_text("#node-details", "LlamaDecoderLayer", timeout=30)
    dash_duo.driver.execute_script(CY + "cy.getElementById('m:model.layers.0.self_attn').emit('tap');")
    ops = until(lambda: [n for n in cy_nodes(dash_duo) if n.startswith("o:")] if "m:model.layers.0.self_attn"
                not in cy_nodes(dash_duo) else None, msg="attention expanded to ops")
    labels = dash_duo.driver.execute_script(CY + "return cy.nodes().map(n => n.data('label'));")
    assert any("scaled_dot_product_attention" in lbl for lbl in labels)
    assert len(ops) > len([n for n in before if n.startswith("o:")])
    # the expanded modules are boxes around their contents (compound nodes); a click on a box folds it again
    box = "box:m:model.layers.0.self_attn"
    assert dash_duo.driver.execute_script(CY + f"return cy.getElementById({box!r}).children().length;") > 2
    assert dash_duo.driver.execute_script(CY + f"return cy.getElementById({box!r}).parent().id();") == \
        "box:m:model.layers.0"
    dash_duo.driver.execute_script(CY + f"cy.getElementById({box!r}).emit('tap');")
    until(lambda: "m:model.layers.0.self_attn" in cy_nodes(dash_duo), msg="attention folded by a click on its box")
    dash_duo.find_element("#graph-collapse-all").click()
    until(lambda: sorted(cy_nodes(dash_duo)) == sorted(before), msg="collapse all")


def test_selecting_a_group_in_the_table_highlights_its_ops(dash_duo, app_state):
    dash_duo.start_server(create_app(app_state))
    open_tab(dash_duo, "Groups")
    gid = "model.layers.0.mlp:channels"
    dash_duo.wait_for_element("#groups-grid .ag-row", timeout=20)
    until(lambda: dash_duo.driver.execute_script(  # scroll the (virtualised) grid to the row, as a user would
        f"const api = dash_ag_grid.getApi('groups-grid'); const n = api && api.getRowNode({gid!r});"
        "if (n) api.ensureNodeVisible(n, 'middle'); return !!n;"), msg="grid api")
    cell = dash_duo.wait_for_element(f'.ag-row[row-id="{gid}"] .ag-cell[col-id="kind"]', timeout=20)
    cell.click()
    dash_duo.wait_for_contains_text("#sel-summary", gid, timeout=30)
    dash_duo.wait_for_contains_text("#units-panel", "gate_proj", timeout=30)
    open_tab(dash_duo, "Graph")
    lit = until(lambda: cy_nodes(dash_duo, "node.g-sel"), msg="highlighted nodes")
    assert "m:model.layers.0" in lit and "m:model.layers.1" not in lit
    dash_duo.driver.execute_script(CY + "cy.getElementById('m:model.layers.0').emit('tap');")
    until(lambda: "m:model.layers.0.mlp" in cy_nodes(dash_duo, "node.g-sel"), msg="mlp highlighted")
    assert "m:model.layers.0.self_attn" not in cy_nodes(dash_duo, "node.g-sel")


def test_knowledge_heatmap_renders_from_a_real_report_and_selects_a_group(dash_duo, app_state, model_dir):
    from lorashear.jobs import KINDS

    ok, why = KINDS["analyze"].availability()
    if not ok:  # the library call has not landed: the view must say so
        dash_duo.start_server(create_app(app_state))
        open_tab(dash_duo, "Knowledge")
        dash_duo.wait_for_contains_text("#knowledge-view", "run an analysis", timeout=30)
        pytest.skip(f"knowledge analysis not available: {why}")
    job = submit(app_state.registry, "analyze", {"model": str(model_dir), "estimator": "magnitude"},
                 app_state.runs_dir, kinds=app_state.kinds)
    done = wait(app_state.registry, job.id, timeout_s=300)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text()[-2000:])
    dash_duo.start_server(create_app(app_state))
    open_tab(dash_duo, "Knowledge")
    dash_duo.wait_for_element("#kn-heads .main-svg .heatmaplayer", timeout=20)
    dash_duo.wait_for_element("#kn-channels .main-svg .heatmaplayer", timeout=20)
    assert "magnitude" in dash_duo.find_element("#kn-note").text
    ActionChains(dash_duo.driver).move_to_element(dash_duo.find_element("#kn-heads .nsewdrag")).click().perform()
    until(lambda: ":heads" in dash_duo.find_element("#sel-summary").text, msg="a head group selected")


def _run_form(duo, kind_label, values):
    open_tab(duo, "Jobs")
    duo.wait_for_element("#job-kind", timeout=30)
    if kind_label not in duo.find_element("#job-kind").text:
        duo.select_dcc_dropdown("#job-kind", value=kind_label)
    first = next(iter(values))  # the form is re-rendered for the chosen kind: wait for its fields
    until(lambda: duo.find_elements(f'#job-form input[id*=\'"name":"{first}"\']'), msg="form fields")
    for name, value in values.items():
        box = duo.wait_for_element(f'#job-form input[id*=\'"name":"{name}"\']', timeout=30)
        box.send_keys(Keys.CONTROL, "a")  # WebElement.clear() does not reach React's onChange
        box.send_keys(Keys.DELETE)
        box.send_keys(str(value))
    duo.find_element("#job-submit").click()


def _started(duo):
    until(lambda: "Started job" in duo.find_element("#job-submit-msg").text, timeout=20,
          msg=lambda: "job start: " + duo.find_element("#job-form").text + duo.find_element("#job-submit-msg").text)


def test_a_graph_job_runs_from_the_form_with_advancing_progress(dash_duo, app_state, model_dir):
    dash_duo.start_server(create_app(app_state))
    _run_form(dash_duo, "Graph", {"source": model_dir})
    _started(dash_duo)
    seen = []

    def progressed():
        text = dash_duo.find_element("#job-progress").text.strip().rstrip("%")
        if text.isdigit() and (not seen or seen[-1] != int(text)):
            seen.append(int(text))
        return "succeeded" in dash_duo.find_element("#job-head").text and seen and seen[-1] == 100

    until(progressed, timeout=120, step=0.05, msg="graph job to finish")
    assert seen == sorted(seen) and seen[-1] == 100 and len(seen) >= 2, seen
    dash_duo.wait_for_contains_text("#job-log", "finding groups", timeout=30)


def test_invalid_form_values_show_field_messages(dash_duo, app_state):
    dash_duo.start_server(create_app(app_state))
    _run_form(dash_duo, "Steps (test)", {"steps": "many"})
    dash_duo.wait_for_contains_text("#job-submit-msg", "Fix the marked fields", timeout=30)
    dash_duo.wait_for_contains_text("#job-form", "must be a number", timeout=30)


def test_a_long_job_can_be_cancelled_and_its_process_is_gone(dash_duo, app_state):
    dash_duo.start_server(create_app(app_state))
    _run_form(dash_duo, "Steps (test)", {"steps": 10000, "delay": 0.05})
    _started(dash_duo)
    job_id = int(dash_duo.find_element("#job-submit-msg").text.split()[2])
    dash_duo.wait_for_contains_text("#job-head", "running", timeout=30)
    pid = app_state.registry.get(job_id).pid
    assert psutil.pid_exists(pid)
    until(lambda: dash_duo.find_element("#job-cancel").is_enabled(), msg="cancel enabled")
    dash_duo.find_element("#job-cancel").click()
    dash_duo.wait_for_contains_text("#job-head", "cancelled", timeout=30)
    assert app_state.registry.get(job_id).status == "cancelled"
    until(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
          timeout=10, msg="worker process to exit")
    until(lambda: not dash_duo.find_element("#job-cancel").is_enabled(), msg="cancel disabled")


def test_after_a_restart_finished_and_dead_jobs_are_listed(dash_duo, app_state, tmp_path):
    runs = tmp_path / "runs"
    first = make_state(runs, kinds=app_state.kinds, worker_env=app_state.worker_env)
    ok = wait(first.registry, submit(first.registry, "steps", {"steps": 2, "delay": 0}, runs, kinds=first.kinds,
                                     env=first.worker_env).id, timeout_s=60)
    assert ok.status == SUCCEEDED
    doomed = submit(first.registry, "steps", {"steps": 10000, "delay": 0.05}, runs, kinds=first.kinds,
                    env=first.worker_env)
    until(lambda: first.registry.get(doomed.id).status == "running", msg="running")
    psutil.Process(doomed.pid).kill()  # the worker dies while nobody watches
    until(lambda: not psutil.pid_exists(doomed.pid) or psutil.Process(doomed.pid).status() == "zombie",
          msg="worker dead")
    # restart: a new state object on the same runs dir, a new app
    restarted = make_state(runs, kinds=app_state.kinds, worker_env=app_state.worker_env)
    restarted.model_job = None
    dash_duo.start_server(create_app(restarted))
    open_tab(dash_duo, "Jobs")
    dash_duo.wait_for_element(f'#jobs-grid .ag-row[row-id="{ok.id}"]', timeout=20)
    row_ok = dash_duo.find_element(f'#jobs-grid .ag-row[row-id="{ok.id}"]').text
    row_dead = dash_duo.find_element(f'#jobs-grid .ag-row[row-id="{doomed.id}"]').text
    assert "succeeded" in row_ok and "failed" in row_dead and "died" in row_dead
    reap(restarted.registry)
    cancel(restarted.registry, doomed.id)
