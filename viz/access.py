"""Who may use the app, and which files it may hand out.

Jobs read and write the server's files, so an app reachable from the network must not be an open door. Bound to
loopback (the default) the app is as private as the machine's own users; bound beyond it (``--host``), every
request — the page, Dash's callback and layout requests, assets, and artifact downloads — must carry the access
token: once as ``?token=…`` (the app then sets an HttpOnly, SameSite=Strict cookie and redirects to the same
page without the token in the address), or as ``Authorization: Bearer …`` for scripts. The token is generated
and printed once at start-up (like Jupyter's), or given with ``--token`` / ``$LORASHEAR_TOKEN``.

Downloads are per job: ``/artifact/<job id>/<name>`` (an artifact file), ``/download/<job id>/<path>`` (a file
under that job's own folder or one of its artifact folders, path relative to the job's folder) and
``/archive/<job id>/<name>`` (an artifact folder — a pruned model — as one zip, streamed). Each serves only
regular files inside the runs folder *and* inside that job's folder or artifacts, after resolving symlinks and
``..``: a link for one job never reaches another job's files, an artifact path recorded by a job — which a remote
worker reports over Redis — can never point the app at ``/etc/passwd``, and the registry database is not served.
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


def open_urls(host: str, port: int, token: str | None = None) -> list[str]:
    """The addresses to print at start-up: a wildcard bind (0.0.0.0, ::, empty) is no address a browser can open,
    so it becomes the loopback one and this machine's host name; a named host stays as given. With ``token``,
    each carries ``?token=``."""
    import socket

    if host in ("0.0.0.0", "::", "", "[::]"):
        hosts = ["127.0.0.1", socket.gethostname()]
    else:
        hosts = [f"[{host}]" if ":" in host and not host.startswith("[") else host]
    q = f"?token={token}" if token else ""
    return [f"http://{h}:{port}/{q}" for h in dict.fromkeys(hosts)]


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

    def job_of(job_id: int):
        if registry is None:
            abort(404)
        try:
            return registry.get(job_id)
        except LorashearError:
            abort(404)

    @server.route("/download/<int:job_id>/<path:rel>")
    def _download(job_id: int, rel: str):
        j = job_of(job_id)
        f = safe_path(runs_root, Path(j.workdir) / rel) if not Path(rel).is_absolute() else None
        if f is None or not within_job(j, f):
            abort(404)
        return send_file(f, as_attachment=True, download_name=f.name)

    @server.route("/artifact/<int:job_id>/<name>")
    def _artifact(job_id: int, name: str):
        path = job_of(job_id).artifacts.get(name)
        if not path:
            abort(404)
        return serve(path)

    @server.route("/archive/<int:job_id>/<name>")
    def _archive(job_id: int, name: str):
        from flask import Response, stream_with_context

        j = job_of(job_id)
        folder = safe_dir(runs_root, j.artifacts.get(name) or "")
        if folder is None:
            abort(404)
        files = [(f, f.relative_to(folder).as_posix()) for f in sorted(folder.rglob("*"))
                 if safe_path(runs_root, f) is not None and _inside(f.resolve(), folder)]
        if not files:
            abort(404)
        zip_name = f"job{j.id}-{folder.name}.zip"
        return Response(stream_with_context(zip_stream(files, f"job{j.id}-{folder.name}")),
                        mimetype="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{zip_name}"'})


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def within_job(job, f: Path) -> bool:
    """True if ``f`` (resolved) is under the job's own folder or is / is under one of its artifacts."""
    roots = [Path(job.workdir)] + [Path(p) for p in (job.artifacts or {}).values() if p]
    return any(_inside(f, r.resolve()) for r in roots)


def safe_dir(runs_root: Path, path: str | Path) -> Path | None:
    """``path`` as a directory inside ``runs_root`` after resolving ``..`` and symlinks, or None."""
    raw = str(path)
    if not raw or "\x00" in raw:
        return None
    cand = Path(raw).resolve()
    return cand if cand.is_dir() and _inside(cand, runs_root) else None


def zip_stream(files: list[tuple[Path, str]], top: str, chunk: int = 1 << 20):
    """Yield a zip of ``files`` ((path, name inside the archive)) under the folder ``top`` as it is written: a
    model folder of gigabytes is never held in memory or on disk twice. Stored, not deflated (safetensors do not
    compress)."""
    import zipfile

    class Sink:
        def __init__(self):
            self.parts: list[bytes] = []
            self.n = 0

        def write(self, b) -> int:
            self.parts.append(bytes(b))
            self.n += len(b)
            return len(b)

        def tell(self) -> int:
            return self.n

        def flush(self) -> None:
            pass

        def take(self) -> bytes:
            out, self.parts = b"".join(self.parts), []
            return out

    sink = Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for f, name in files:
            with open(f, "rb") as src, zf.open(f"{top}/{name}", "w", force_zip64=True) as dst:
                while True:
                    b = src.read(chunk)
                    if not b:
                        break
                    dst.write(b)
                    if sink.n and sink.parts:
                        yield sink.take()
            yield sink.take()
    yield sink.take()


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


__all__ = ["install", "is_loopback", "open_urls", "resolve_token", "safe_dir", "safe_path", "within_job", "zip_stream", "COOKIE"]
