"""The Knowledge tab in a real (headless chromium) browser: only the browsed model's reports, kv-head and
query-head heatmaps on a named colour scale, a click on a head cell selects *that* unit, and the Prune tab's
previewed plan is outlined on the heatmaps."""
import pytest
from selenium.webdriver.common.action_chains import ActionChains

from lorashear.jobs import SUCCEEDED, submit, wait
from viz.app import create_app

from test_app_browser import open_tab, until
from test_knowledge_view import _record

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")]

GD = "const gd = document.querySelector('#{id} .js-plotly-plot');"


def click_cell(duo, graph_id, x, y):
    """A real mouse click on the centre of heatmap cell (x, y), located through plotly's own axes."""
    dx, dy, w, h = duo.driver.execute_script(
        GD.format(id=graph_id) + "gd.scrollIntoView({block: 'center'}); const fl = gd._fullLayout;"
        "const r = gd.getBoundingClientRect();"
        f"return [fl.xaxis.l2p({x}) + fl.xaxis._offset, fl.yaxis.l2p({y}) + fl.yaxis._offset, r.width, r.height];")
    el = duo.find_element(f"#{graph_id} .js-plotly-plot")
    # to the element's centre, then by the cell's offset from it (the same in every selenium version)
    ActionChains(duo.driver).move_to_element(el).move_by_offset(int(dx - w / 2), int(dy - h / 2)).click().perform()


def outlined(duo, graph_id):
    """(x, y) cells of the heatmap's 'planned removal' outline trace, as drawn in the page."""
    return duo.driver.execute_script(
        GD.format(id=graph_id) + "const t = (gd.data || []).find(t => (t.name || '').startsWith('planned removal'));"
        "return t ? t.x.map((x, i) => [x, t.y[i]]) : null;")


def test_knowledge_tab_is_this_models_and_a_click_selects_that_unit(dash_duo, app_state, model_dir):
    from lorashear.knowledge import analyze
    from lorashear.prune.preview import plan_model
    from lorashear.prune.settings import PlanSettings
    from tests.tiny_models import build, traced

    job = submit(app_state.registry, "analyze", {"model": str(model_dir), "estimator": "magnitude"},
                 app_state.runs_dir, kinds=app_state.kinds)
    done = wait(app_state.registry, job.id, timeout_s=300)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text()[-2000:])
    _, _, groups = traced("llama-gqa")  # a newer report of another model, under the same path
    other = _record(app_state, analyze(build("llama-gqa"), None, estimator="magnitude", groups=groups,
                                       source=str(model_dir)), {"model": str(model_dir), "estimator": "magnitude"})
    lib = plan_model(str(model_dir), **PlanSettings(ratio=0.2).plan_args())  # the Prune tab's default preview

    dash_duo.start_server(create_app(app_state))
    open_tab(dash_duo, "Knowledge")
    dash_duo.wait_for_element("#kn-heads .main-svg .heatmaplayer", timeout=30)
    dash_duo.wait_for_element("#kn-qheads .main-svg .heatmaplayer", timeout=30)
    assert f"job {job.id}" in dash_duo.find_element("#kn-report").text and f"job {other.id}" not in \
        dash_duo.find_element("#knowledge-view").text
    assert "log10 colour scale" in dash_duo.find_element("#kn-heads .gtitle").text

    click_cell(dash_duo, "kn-heads", 3, 2)
    until(lambda: "model.layers.2.self_attn:heads unit 3" in dash_duo.find_element("#sel-summary").text,
          msg=lambda: "head unit 3 of layer 2 selected: " + dash_duo.find_element("#sel-summary").text)
    click_cell(dash_duo, "kn-qheads", 1, 4)
    until(lambda: "model.layers.4.self_attn:query_heads unit 1" in dash_duo.find_element("#sel-summary").text,
          msg=lambda: "query-head unit 1 of layer 4 selected: " + dash_duo.find_element("#sel-summary").text)
    open_tab(dash_duo, "Groups")
    until(lambda: dash_duo.find_element("#unit-index").get_attribute("value") == "1", msg="unit box shows unit 1")
    dash_duo.wait_for_contains_text("#units-panel", "indices of unit 1", timeout=30)

    open_tab(dash_duo, "Prune")  # the preview is computed when the tab opens
    dash_duo.wait_for_text_to_equal("#plan-params", f"{lib.params_total:,} → {lib.params_total - lib.params_removed:,}",
                                    timeout=90)
    open_tab(dash_duo, "Knowledge")
    heads = sorted((u, int(gid.split(".")[2])) for gid, us in lib.removal.items() if gid.endswith(":heads") for u in us)
    bins = sorted({(u // 20 * 20, int(gid.split(".")[2])) for gid, us in lib.removal.items()
                   if gid.endswith("mlp:channels") for u in us})  # 640 channels in 32 bins of 20
    assert heads or bins
    until(lambda: sorted(map(tuple, outlined(dash_duo, "kn-channels") or [])) == bins and
          sorted(map(tuple, outlined(dash_duo, "kn-heads") or [])) == heads,
          timeout=60, msg=lambda: f"planned outline {outlined(dash_duo, 'kn-channels')} vs {bins}")
