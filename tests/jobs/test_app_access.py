"""The app's access token and download routes (viz/access.py), through Flask's test client (no browser)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorashear import LorashearError
from lorashear.jobs import SUCCEEDED

TOKEN = "t0ken-" + "x" * 20


@pytest.fixture
def served(tmp_path):
    from viz.app import create_app
    from viz.session import make_state

    runs = tmp_path / "runs"
    state = make_state(runs)
    job = state.registry.create("eval", "lorashear.jobs.eval_job:run", {}, runs)
    good = job.out_dir / "eval.json"
    good.parent.mkdir(parents=True)
    good.write_text('{"ok": 1}')
    secret = tmp_path / "secret.txt"  # next to the runs folder, not inside it
    secret.write_text("do not serve")
    os.symlink(secret, job.out_dir / "link.txt")
    state.registry.finish(job.id, SUCCEEDED, artifacts={
        "eval": str(good), "passwd": "/etc/passwd", "up": str(runs / "jobs" / ".." / ".." / "secret.txt"),
        "link": str(job.out_dir / "link.txt"), "db": str(runs / "jobs.sqlite"), "folder": str(job.out_dir)})
    return state, job, good, runs


def test_token_rules():
    from viz.access import is_loopback, resolve_token

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("gpu-box")
    assert resolve_token("127.0.0.1", None) == (None, False)  # loopback: as private as the machine
    token, generated = resolve_token("0.0.0.0", None)
    assert generated and len(token) >= 24  # beyond loopback: never without a token
    assert resolve_token("0.0.0.0", TOKEN) == (TOKEN, False)
    with pytest.raises(LorashearError, match="at least 16"):
        resolve_token("0.0.0.0", "short")
    with pytest.raises(LorashearError, match="debugger"):
        resolve_token("0.0.0.0", TOKEN, debug=True)


def test_every_request_needs_the_token(served):
    from viz.app import create_app

    state, job, good, _ = served
    client = create_app(state, token=TOKEN, port=8123).server.test_client()
    for path in ("/", "/_dash-layout", "/_dash-dependencies", f"/artifact/{job.id}/eval", "/download/x",
                 "/assets/style.css"):
        assert client.get(path).status_code == 403, path
    # a Dash callback request without the token
    r = client.post("/_dash-update-component", json={"output": "sel-summary.children", "outputs": {},
                                                     "inputs": [], "changedPropIds": []})
    assert r.status_code == 403
    assert client.get("/?token=wrong" + TOKEN).status_code == 403
    assert client.get("/", headers={"Authorization": "Bearer nope"}).status_code == 403
    # ?token= once: cookie (HttpOnly, SameSite=Strict) and a redirect that drops the token from the address
    r = client.get(f"/?token={TOKEN}&tab=jobs")
    assert r.status_code == 302 and "token" not in r.headers["Location"] and "tab=jobs" in r.headers["Location"]
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("lorashear_token_8123=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert client.get("/").status_code == 200  # the cookie now rides along
    assert client.get("/_dash-layout").status_code == 200
    other = create_app(state, token=TOKEN).server.test_client()
    assert other.get("/_dash-layout", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_loopback_without_token_is_open(served):
    from viz.app import create_app

    state, *_ = served
    assert create_app(state).server.test_client().get("/_dash-layout").status_code == 200


def test_downloads_serve_only_files_inside_the_runs_folder(served):
    from viz.app import create_app

    state, job, good, runs = served
    client = create_app(state, token=TOKEN).server.test_client()
    h = {"Authorization": f"Bearer {TOKEN}"}
    r = client.get(f"/artifact/{job.id}/eval", headers=h)
    assert r.status_code == 200 and r.data == b'{"ok": 1}'
    rel = good.relative_to(Path(job.workdir).resolve()).as_posix()  # downloads are scoped per job
    assert client.get(f"/download/{job.id}/{rel}", headers=h).data == b'{"ok": 1}'
    for name in ("passwd", "up", "link", "db", "folder", "missing"):
        assert client.get(f"/artifact/{job.id}/{name}", headers=h).status_code == 404, name
    assert client.get(f"/artifact/{job.id + 99}/eval", headers=h).status_code == 404
    for path in ("/download/../secret.txt", "/download/%2e%2e/secret.txt", "/download/jobs/%2e%2e/%2e%2e/secret.txt",
                 "/download/..%2fsecret.txt", "/download//etc/passwd", "/download/%2fetc%2fpasswd",
                 "/download/jobs.sqlite", f"/download/{job.id}/out/link.txt", "/download/%00",
                 f"/download/{job.id}/../../jobs.sqlite", f"/download/{job.id}/%2e%2e/%2e%2e/../secret.txt"):
        r = client.get(path, headers=h, follow_redirects=True)
        # 404, or (a double slash matches no download route) Dash's index page: never a file
        assert r.status_code == 404 or r.data.startswith(b"<!DOCTYPE html>"), path
        assert "Content-Disposition" not in r.headers and b"do not serve" not in r.data and b"root:" not in r.data, path


def test_safe_path(tmp_path):
    from viz.access import safe_path

    runs = (tmp_path / "runs").resolve()
    (runs / "a").mkdir(parents=True)
    (runs / "a" / "f.txt").write_text("x")
    (tmp_path / "outside.txt").write_text("y")
    assert safe_path(runs, "a/f.txt") == runs / "a" / "f.txt"
    assert safe_path(runs, runs / "a" / "f.txt") == runs / "a" / "f.txt"
    for bad in ("../outside.txt", str(tmp_path / "outside.txt"), "a/../../outside.txt", "/etc/passwd", "a",
                "a/f.txt\x00.png", Path("a") / ".." / ".." / "outside.txt"):
        assert safe_path(runs, bad) is None, bad
