"""Who may use the app, and which files it may hand out.

Jobs read and write the server's files, so an app reachable from the network must not be an open door. Bound to
loopback (the default) the app is as private as the machine's own users; bound beyond it (``--host``), every
request — the page, Dash's callback and layout requests, assets, and artifact downloads — must carry the access
token: once as ``?token=…`` (the app then sets an HttpOnly, SameSite=Strict cookie and redirects to the same
page without the token in the address), or as ``Authorization: Bearer …`` for scripts. The token is generated
and printed once at start-up (like Jupyter's), or given with ``--token`` / ``$LORASHEAR_TOKEN``.

Downloads (``/download/<path relative to the runs folder>`` and ``/artifact/<job id>/<name>``) serve only regular
files inside the runs folder, after resolving symlinks and ``..``: an artifact path recorded by a job — which a
remote worker reports over Redis — can never point the app at ``/etc/passwd``; the registry database is not
served either.
"""
from __future__ import annotations

import hmac
import ipaddress
import secrets
from pathlib import Path
from urllib.parse import urlencode

from lorashear.errors import LorashearError

COOKIE = "lorashear_token"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it resolves to something others can reach


def resolve_token(host: str, token: str | None, debug: bool = False) -> tuple[str | None, bool]:
    """The token to enforce (None: no check, loopback only) and whether it was generated here (to print it)."""
    if debug and not is_loopback(host):
        raise LorashearError("--debug serves Werkzeug's debugger, which runs code: use it on loopback only")
    if token is not None:
        token = token.strip()
        if len(token) < 16:
            raise LorashearError("--token must be at least 16 characters (or leave it out to get a generated one)")
        return token, False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(24), True


def _cookie_name(port: int | None) -> str:
    return f"{COOKIE}_{port}" if port else COOKIE  # cookies ignore ports: two apps on one host keep theirs apart


def install(server, token: str | None, runs_dir: Path, registry=None, port: int | None = None) -> None:
    """Add the token check (when ``token`` is set) and the download routes to the app's Flask ``server``."""
    from flask import abort, make_response, redirect, request, send_file

    runs_root = Path(runs_dir).resolve()
    cookie = _cookie_name(port)

    def ok(given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())  # type: ignore[union-attr]

    if token is not None:
        @server.before_request
        def _check_token():
            auth = request.headers.get("Authorization", "")
            scheme, _, value = auth.partition(" ")
            if scheme.lower() in ("bearer", "token") and ok(value.strip()):
                return None
            if ok(request.cookies.get(cookie)):
                return None
            if ok(request.args.get("token")):
                rest = {k: v for k, v in request.args.items() if k != "token"}
                resp = make_response(redirect(request.path + ("?" + urlencode(rest) if rest else ""), code=302))
                resp.set_cookie(cookie, token, httponly=True, samesite="Strict", secure=request.is_secure)
                return resp
            return make_response("lorashear: access token required (open the address printed at start-up, "
                                 "with ?token=...)\n", 403, {"Content-Type": "text/plain; charset=utf-8"})

    def serve(path: str | Path):
        f = safe_path(runs_root, path)
        if f is None:
            abort(404)
        return send_file(f, as_attachment=True, download_name=f.name)

    @server.route("/download/<path:rel>")
    def _download(rel: str):
        return serve(rel)

    @server.route("/artifact/<int:job_id>/<name>")
    def _artifact(job_id: int, name: str):
        if registry is None:
            abort(404)
        try:
            path = registry.get(job_id).artifacts.get(name)
        except LorashearError:
            abort(404)
        if not path:
            abort(404)
        return serve(path)


def safe_path(runs_root: Path, path: str | Path) -> Path | None:
    """``path`` (absolute, or relative to ``runs_root``) as a regular file inside ``runs_root`` after resolving
    ``..`` and symlinks, or None. The registry database itself is never served."""
    raw = str(path)
    if "\x00" in raw:
        return None
    p = Path(raw)
    cand = (p if p.is_absolute() else runs_root / p).resolve()
    try:
        cand.relative_to(runs_root)
    except ValueError:
        return None
    if cand.name.startswith("jobs.sqlite") or not cand.is_file():
        return None
    return cand


__all__ = ["install", "is_loopback", "resolve_token", "safe_path", "COOKIE"]
