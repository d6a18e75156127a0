"""The whole loop in a real (headless chromium) browser on the demo model: plan at 20 % → the preview's numbers are
the library's plan → a Prune job with a tiny step budget runs to completion in a worker → Compare shows dense vs
pruned with the exact parameter counts, one colour per model → the pruned model opens in the Model (real per-layer
widths), Graph and Groups views, smaller where the plan said."""
import json
import os

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from viz.app import create_app

from test_app_browser import open_tab, until

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")]

RUN = {"steps": "2", "batch_size": "1", "seq_len": "32", "eval_tokens": "1024"}


def _shot(duo, name):
    """With LORASHEAR_SCREENSHOTS=DIR, keep a screenshot of this step (docs/img is made this way)."""
    out = os.environ.get("LORASHEAR_SCREENSHOTS")
    if out:
        os.makedirs(out, exist_ok=True)
        duo.driver.set_window_size(1500, 1100)
        duo.driver.save_screenshot(os.path.join(out, f"{name}.png"))


def _type(duo, css, value):
    box = duo.wait_for_element(css, timeout=30)
    box.send_keys(Keys.CONTROL, "a")  # WebElement.clear() does not reach React's onChange
    box.send_keys(Keys.DELETE)
    box.send_keys(str(value))


@pytest.mark.slow  # ~1.5 min on 2 busy cores: a real prune job (dense and pruned evaluation) and a second trace
def test_plan_prune_compare_browse(dash_duo, app_state, model_dir):
    from lorashear.prune.preview import plan_model
    from lorashear.prune.settings import PlanSettings
    from viz.views.compare import folder_layers

    lib = plan_model(str(model_dir), **PlanSettings(ratio=0.2).plan_args())  # `lorashear plan demo --ratio 0.2`
    dash_duo.start_server(create_app(app_state))
    open_tab(dash_duo, "Prune")
    want = f"{lib.params_total:,} → {lib.params_total - lib.params_removed:,}"
    dash_duo.wait_for_text_to_equal("#plan-params", want, timeout=60)
    assert f"{lib.params_removed:,}" in dash_duo.find_element("#plan-removed").text
    dash_duo.wait_for_element("#plan-heads-fig .heatmaplayer", timeout=30)
    _shot(dash_duo, "app-plan")
    open_tab(dash_duo, "Groups")  # the planned groups are marked in the grid
    planned = next(iter(lib.removal))
    dash_duo.wait_for_element("#groups-grid .ag-row", timeout=30)
    until(lambda: dash_duo.driver.execute_script(
        f"const api = dash_ag_grid.getApi('groups-grid'); const n = api && api.getRowNode({planned!r});"
        "if (n) api.ensureNodeVisible(n, 'middle'); return n && n.data.planned;"), msg="planned mark in the grid")
    open_tab(dash_duo, "Prune")

    # bad input: one line next to the field, the numbers go away until it is fixed
    _type(dash_duo, "#plan-layers", "7:9\n")
    dash_duo.wait_for_contains_text("#plan-err-layers", "outside the model", timeout=30)
    _type(dash_duo, "#plan-layers", "\n")
    until(lambda: dash_duo.find_element("#plan-err-layers").text == "", msg="layer error cleared")
    dash_duo.wait_for_text_to_equal("#plan-params", want, timeout=60)

    # prune with this plan: magnitude scores are the preview's scores, so the job's plan is the previewed plan (the
    # method's allocation, global, re-plans the preview)
    dash_duo.select_dcc_dropdown("#run-method", value="magnitude")
    lib = plan_model(str(model_dir), **PlanSettings(ratio=0.2, method="magnitude").plan_args())
    dash_duo.wait_for_contains_text("#plan-fidelity", "this is the run's plan", timeout=60)
    dash_duo.wait_for_text_to_equal("#plan-params", f"{lib.params_total:,} → {lib.params_total - lib.params_removed:,}",
                                    timeout=60)
    for name, value in RUN.items():
        _type(dash_duo, f"#run-{name}", value)
    dash_duo.select_dcc_dropdown("#run-device", value="cpu")
    dash_duo.find_element("#run-prune").click()
    dash_duo.wait_for_contains_text("#job-head", "prune", timeout=30)  # the app moved to the Jobs tab
    until(lambda: "succeeded" in dash_duo.find_element("#job-head").text
          or "failed" in dash_duo.find_element("#job-head").text, timeout=900, step=0.5, msg="prune job to finish")
    job = app_state.registry.list(kind="prune")[0]
    assert job.status == "succeeded", (job.message, job.log_path.read_text()[-3000:])
    dash_duo.wait_for_element("#job-metrics-box .main-svg", timeout=30)  # the job's curves
    _shot(dash_duo, "app-prune-job")
    plan = json.loads(open(job.artifacts["plan"]).read())
    assert plan["removal"] == lib.removal and plan["params_removed"] == lib.params_removed
    assert job.result["params_before"] == lib.params_total
    assert job.result["params_after"] == lib.params_total - lib.params_removed

    # Compare: dense next to pruned, exact counts, per-layer bars
    open_tab(dash_duo, "Compare")
    dash_duo.wait_for_element("#compare-heads .main-svg", timeout=30)
    _shot(dash_duo, "app-compare")
    text = dash_duo.find_element("#compare-table").text
    assert f"{lib.params_total:,}" in text and f"{lib.params_total - lib.params_removed:,}" in text
    assert "thread" in text and "tokens/source" in text  # the conditions of the timings
    assert "auto" not in text  # the device the run recorded
    # one colour per model across the page: the pruned model's colour is the same in every chart
    colours = dash_duo.driver.execute_script(
        "const out = {}; for (const id of ['compare-ppl', 'compare-params', 'compare-heads', 'compare-channels']) {"
        " const g = document.querySelector('#' + id + ' .js-plotly-plot'); if (!g) continue;"
        " out[id] = g.data.map(t => [t.name, t.marker && t.marker.color]); } return out;")
    assert set(colours) == {"compare-ppl", "compare-params", "compare-heads", "compare-channels"}
    pruned_colours = {c for traces in colours.values() for name, c in traces if "pruned" in name}
    dense_colours = {c for traces in colours.values() for name, c in traces if "dense" in name}
    assert len(pruned_colours) == 1 and len(dense_colours) == 1 and pruned_colours != dense_colours, colours

    # Browse the pruned model: traced by a graph job, then the app shows it
    row = next(r for r in dash_duo.driver.find_elements(By.CSS_SELECTOR, "#compare-table tbody tr")
               if "pruned (magnitude" in r.text)
    row.find_element(By.TAG_NAME, "button").click()
    dash_duo.wait_for_contains_text("#model-line", job.artifacts["model"], timeout=300)
    # the pruned model's Model tab: its real per-layer widths, not the config's MLP size
    open_tab(dash_duo, "Model")
    widths = [v for v in (lib.groups.get(f"model.layers.{i}.mlp:channels", {}).get("kept") for i in range(64)) if v]
    dash_duo.wait_for_contains_text("#overview-size-intermediate_size",
                                    f"{min(widths)}–{max(widths)} per layer", timeout=60)
    dash_duo.wait_for_element("#overview-params .main-svg", timeout=30)
    _shot(dash_duo, "app-model-pruned")
    cut = next(gid for gid in lib.removal if gid.endswith(":heads")) if any(
        g.endswith(":heads") for g in lib.removal) else next(iter(lib.removal))
    layer = int(cut.split(".")[2])
    open_tab(dash_duo, "Graph")
    from test_app_browser import CY

    until(lambda: dash_duo.driver.execute_script(CY + f"return cy.getElementById('m:model.layers.{layer}').length;"),
          msg="pruned model's graph")
    dash_duo.driver.execute_script(CY + f"cy.getElementById('m:model.layers.{layer}').emit('tap');")
    small = folder_layers(job.artifacts["model"])["params"][layer]
    dash_duo.wait_for_contains_text("#node-details", f"{small:,}", timeout=30)  # the block's (smaller) size
    assert small < folder_layers(str(model_dir))["params"][layer]
    open_tab(dash_duo, "Groups")
    dash_duo.wait_for_element("#groups-grid .ag-row", timeout=30)
    until(lambda: dash_duo.driver.execute_script(
        f"const api = dash_ag_grid.getApi('groups-grid'); const n = api && api.getRowNode({cut!r});"
        "if (n) api.ensureNodeVisible(n, 'middle'); return !!n;"), msg="grid row")
    units = dash_duo.wait_for_element(f'.ag-row[row-id="{cut}"] .ag-cell[col-id="units"]', timeout=30).text
    assert int(units) == lib.groups[cut]["kept"]


def test_hand_selection_exports_from_the_groups_tab(dash_duo, app_state):
    from lorashear.loading import load_causal_lm

    gid = "model.layers.3.self_attn:heads"
    dash_duo.start_server(create_app(app_state))
    open_tab(dash_duo, "Groups")
    dash_duo.wait_for_element("#groups-grid .ag-row", timeout=30)
    until(lambda: dash_duo.driver.execute_script(
        f"const api = dash_ag_grid.getApi('groups-grid'); const n = api && api.getRowNode({gid!r});"
        "if (n) api.ensureNodeVisible(n, 'middle'); return !!n;"), msg="grid api")
    dash_duo.find_element("#hand-export").click()  # nothing selected yet: a message under the field
    dash_duo.wait_for_contains_text("#hand-units-err", "no unit selected", timeout=30)
    dash_duo.wait_for_element(f'.ag-row[row-id="{gid}"] .ag-cell[col-id="kind"]', timeout=30).click()
    dash_duo.wait_for_contains_text("#units-panel", "k_proj", timeout=30)
    _type(dash_duo, "#unit-index", "2\n")
    dash_duo.find_element("#hand-add").click()
    until(lambda: dash_duo.find_element("#hand-units").get_attribute("value") == f'{{"{gid}": [2]}}',
          msg="selection JSON")
    dash_duo.find_element("#hand-export").click()
    dash_duo.wait_for_contains_text("#job-head", "export", timeout=30)
    until(lambda: "succeeded" in dash_duo.find_element("#job-head").text
          or "failed" in dash_duo.find_element("#job-head").text, timeout=300, step=0.5, msg="export job")
    job = app_state.registry.list(kind="export")[0]
    assert job.status == "succeeded", (job.message, job.log_path.read_text()[-3000:])
    small = load_causal_lm(job.artifacts["model"])
    assert small.model.layers[3].self_attn.k_proj.weight.shape[0] * 4 == \
        small.model.layers[2].self_attn.k_proj.weight.shape[0] * 3  # one of 4 kv heads gone, layer 3 only
