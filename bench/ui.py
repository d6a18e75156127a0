"""UI benchmark: the app on the LLaMA-2-7B config in meta mode, driven by headless chromium.

Measures (median of N runs, wall time in the browser):
  * overview — navigation start to an interactive overview (summary table and parameter chart drawn, no
    Dash callback pending); target <= 2 s;
  * expand   — tap on a collapsed block to its sub-modules drawn (a server round trip + cytoscape update);
    target <= 0.5 s; also a block's attention expanded to ops;
  * sort     — click on the groups table's "params" header to the first row of the sorted order drawn,
    with every group in the table; target <= 0.5 s;
  * plan     — a move of the Prune tab's ratio slider (one step, a target never previewed before) to the plan
    preview's parameter line showing the new plan (the library's planner on the server, per-layer counts,
    three figures); target <= 0.5 s. The first preview of a model (building its meta model) is not timed.

Usage:  python bench/ui.py [--config configs/llama-2-7b.json] [--runs runs/bench-ui] [--repeat 5]
The first run traces the config in a graph job (~30-40 s on 2 cores); later runs reuse it.
Needs chromium + chromium-driver (apt) and dash[testing] (selenium).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"overview_s": 2.0, "expand_s": 0.5, "sort_s": 0.5, "plan_s": 0.5}

CY = ("const host = [document.getElementById('cy'), ...document.querySelectorAll('#cy div')]"
      ".find(d => d && d._cyreg && d._cyreg.cy); const cy = host ? host._cyreg.cy : null;")

# waits in the page (no WebDriver polling latency): resolve with performance.now() when cond() holds
WAIT = """
const cond = %s; const done = arguments[arguments.length - 1]; const t0 = performance.now();
(function poll() { let ok = false; try { ok = cond(); } catch (e) {}
  if (ok) return done(performance.now());
  if (performance.now() - t0 > 60000) return done(-1);
  setTimeout(poll, 5); })();
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(config: str, runs: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--config", config, "--meta", "--runs", runs,
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    for line in proc.stdout:
        print("  app:", line.rstrip(), flush=True)
        if "Dash is running" in line:
            # keep draining the request log so a full pipe can never block the server
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc
    raise SystemExit(f"the app exited ({proc.wait()})")


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options

    opts = Options()
    opts.binary_location = os.environ.get("DASH_TEST_CHROMEPATH", "/usr/bin/chromium")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1000"):
        opts.add_argument(a)
    d = webdriver.Chrome(options=opts)
    d.set_script_timeout(90)
    return d


def wait_js(d, cond: str) -> float:
    t = d.execute_async_script(WAIT % cond)
    if t < 0:
        raise RuntimeError(f"timed out: {cond}")
    return t


IDLE = "!document.querySelector('[data-dash-is-loading=\"true\"]')"


def overview(d, url: str) -> float:
    d.get("about:blank")
    d.get(url)
    t = wait_js(d, "() => document.querySelector('#overview-params .main-svg .bars') && "
                   "document.querySelector('#overview table.kv') && " + IDLE)
    return t / 1000  # performance.now() counts from navigation start


def open_tab(d, label: str) -> None:
    for el in d.find_elements("css selector", "#tabs > div, #tabs [role=tab]"):
        if el.text.strip() == label:
            el.click()
            return
    raise RuntimeError(f"no tab {label}")


def expand(d, nid: str) -> float:
    """Tap a collapsed node; done when it is replaced by its children (one elements update)."""
    wait_js(d, "() => { %s return cy && cy.getElementById(%r).length > 0; }" % (CY, nid))
    n0 = d.execute_script(CY + "return cy.nodes().length;")
    t0 = d.execute_script(CY + "const t = performance.now(); cy.getElementById(arguments[0]).emit('tap'); return t;",
                          nid)
    t1 = wait_js(d, "() => { %s return cy.getElementById(%r).length === 0 && cy.nodes().length > %d; }"
                 % (CY, nid, n0))
    return (t1 - t0) / 1000


def sort_groups(d, expected_first: str) -> float:
    wait_js(d, "() => document.querySelector('#groups-grid .ag-header-cell[col-id=\"params\"]')")
    t0 = d.execute_script("const t = performance.now(); document.querySelector("
                          "'#groups-grid .ag-header-cell[col-id=\"params\"] .ag-header-cell-label').click(); return t;")
    t1 = wait_js(d, "() => { const r = document.querySelector('#groups-grid .ag-center-cols-container "
                    ".ag-row[row-index=\"0\"]'); return r && r.getAttribute('row-id') === %r; }" % expected_first)
    return (t1 - t0) / 1000


def plan_move(d) -> float:
    """Move the ratio slider one step up with the keyboard (focus on its thumb, ArrowRight: +1 %; a committed move,
    like releasing a drag); done when the parameter line changed and no callback is pending. Returns (done, new
    parameter line shown) in seconds after the key event."""
    from selenium.webdriver.common.keys import Keys

    wait_js(d, "() => document.querySelector('#plan-params') && " + IDLE)
    before = d.find_element("css selector", "#plan-params").text
    thumb = d.find_element("css selector", "#plan-ratio [role=slider]")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();", thumb)
    # the clock starts at the key event in the page, not before WebDriver's send_keys (its own round trip is not
    # the app's latency)
    d.execute_script("window.__t0 = null; document.addEventListener('keydown', "
                     "() => { window.__t0 = performance.now(); }, {capture: true, once: true});")
    thumb.send_keys(Keys.ARROW_RIGHT)
    changed = "() => { const e = document.querySelector('#plan-params'); return e && e.textContent !== %r; }" % before
    t_text = wait_js(d, changed)
    t1 = wait_js(d, "() => (%s)() && %s" % (changed, IDLE))
    t0 = d.execute_script("return window.__t0;")
    return (t1 - t0) / 1000, (t_text - t0) / 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "llama-2-7b.json"))
    ap.add_argument("--runs", default=str(ROOT / "runs" / "bench-ui"))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)

    port = free_port()
    app = start_app(args.config, args.runs, port)
    url = f"http://127.0.0.1:{port}/"
    d = browser()
    try:
        # the group with the fewest parameters comes first after one click on "params" (ascending)
        from lorashear import load_groups
        from lorashear.jobs import Registry

        job = Registry(Path(args.runs) / "jobs.sqlite").list(kind="graph", status="succeeded")[0]
        groups = load_groups(job.artifacts["groups"])
        first = min(groups, key=lambda g: (g.n_units * g.params_per_unit)).id

        overview(d, url)  # warm-up: browser cache, server caches
        res: dict[str, list[float]] = {"overview_s": [], "expand_s": [], "expand_ops_s": [], "sort_s": [], "plan_s": [],
                                       "plan_text_s": []}
        for i in range(args.repeat):
            res["overview_s"].append(overview(d, url))
            open_tab(d, "Graph")
            layer = f"m:model.layers.{5 + i}"
            res["expand_s"].append(expand(d, layer))  # block -> its modules
            res["expand_ops_s"].append(expand(d, f"{layer}.self_attn"))  # attention -> its ops
            open_tab(d, "Groups")
            res["sort_s"].append(sort_groups(d, first))
        open_tab(d, "Prune")
        wait_js(d, "() => document.querySelector('#plan-params') && " + IDLE)  # the first preview builds the model
        for _ in range(args.repeat):  # a new target each time (20 % -> 21 % -> ...): no cached plan
            done, text = plan_move(d)
            res["plan_s"].append(done)
            res["plan_text_s"].append(text)
        summary = {k: round(statistics.median(v), 3) for k, v in res.items()}
        summary.update({"load_avg_1m": round(os.getloadavg()[0], 2), "groups": len(groups), "graph_nodes": job.result.get("nodes"), "repeat": args.repeat,
                        "config": os.path.relpath(args.config, ROOT)})
    finally:
        d.quit()
        app.terminate()
        app.wait(10)
    print(json.dumps(summary, indent=2))
    for k, target in TARGETS.items():
        print(f"{k:12s} {summary[k]:.3f} s  (target <= {target} s)  {'ok' if summary[k] <= target else 'OVER'}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
