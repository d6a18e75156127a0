"""Issue 25's stale-UI items in a real (headless chromium) browser: a target typed + Enter re-plans at once, the
jobs grid highlights the job shown, and the Prune page says which of its numbers a run reproduces."""
import os

import pytest
from selenium.webdriver.common.keys import Keys

from viz.app import create_app

from test_app_browser import _run_form, _started, open_tab, until

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")]


def _shot(duo, name):
    """With LORASHEAR_SCREENSHOTS=DIR, keep a screenshot of this step."""
    out = os.environ.get("LORASHEAR_SCREENSHOTS")
    if out:
        os.makedirs(out, exist_ok=True)
        duo.driver.set_window_size(1500, 1300)
        duo.driver.save_screenshot(os.path.join(out, f"{name}.png"))


def test_typed_target_and_enter_replans_without_leaving_the_box(dash_duo, app_state):
    dash_duo.start_server(create_app(app_state))
    open_tab(dash_duo, "Prune")
    dash_duo.wait_for_contains_text("#plan-removed", "target 20%", timeout=60)
    assert "estimate" in dash_duo.find_element("#plan-fidelity").text  # llm-pruner: which units is not exact
    assert "Taylor scores" in dash_duo.find_element("#plan-fidelity").text
    _shot(dash_duo, "ui-prune")
    box = dash_duo.find_element("#plan-ratio-text")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys("35" + Keys.ENTER)  # Enter, no blur: the focus stays in the box
    dash_duo.wait_for_contains_text("#plan-removed", "target 35%", timeout=15)
    assert dash_duo.driver.switch_to.active_element == box


def test_grid_highlights_the_job_shown(dash_duo, app_state):
    dash_duo.start_server(create_app(app_state))
    _run_form(dash_duo, "Steps (test)", {"steps": 2, "delay": 0})
    _started(dash_duo)
    job_id = int(dash_duo.find_element("#job-submit-msg").text.split()[2])
    dash_duo.wait_for_contains_text("#job-head", f"{job_id} · steps", timeout=30)
    until(lambda: "ag-row-selected" in (dash_duo.find_element(
        f'#jobs-grid .ag-row[row-id="{job_id}"]').get_attribute("class") or ""), timeout=20,
        msg="the shown job's row highlighted")
    assert len(dash_duo.find_elements("#jobs-grid .ag-row-selected")) == 1
