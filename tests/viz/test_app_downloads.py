"""Downloads are scoped per job (viz/access.py), through Flask's test client: a job's link serves that job's
files only, and a model folder comes as one zip."""
from __future__ import annotations

import io
from pathlib import Path
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save_file

from lorashear.jobs import SUCCEEDED


@pytest.fixture
def two_jobs(tmp_path):
    from viz.session import make_state

    runs = tmp_path / "runs"
    state = make_state(runs)
    jobs = []
    for i in range(2):
        j = state.registry.create("export", "lorashear.jobs.export_job:run", {}, runs)
        model = j.out_dir / "model"
        model.mkdir(parents=True)
        (model / "config.json").write_text(f'{{"job": {i}}}')
        save_file({"w": np.arange(4096, dtype=np.float32)}, str(model / "model.safetensors"))
        (j.out_dir / "note.txt").write_text(f"job {i}")
        state.registry.finish(j.id, SUCCEEDED, artifacts={"model": str(model)})
        jobs.append(state.registry.get(j.id))
    return state, jobs, runs


def test_download_serves_only_the_jobs_own_files(two_jobs):
    from viz.app import create_app

    state, (a, b), runs = two_jobs
    client = create_app(state).server.test_client()
    assert client.get(f"/download/{a.id}/out/note.txt").data == b"job 0"
    assert client.get(f"/download/{b.id}/out/model/config.json").data == b'{"job": 1}'
    # job a's link cannot reach job b's files, nor anything else in the runs folder
    rel_b = (b.out_dir / "note.txt").relative_to(Path(a.workdir).parent)
    for path in (f"/download/{a.id}/../{rel_b.as_posix()}", f"/download/{a.id}/%2e%2e/{b.id}/out/note.txt",
                 f"/download/{a.id}/{b.out_dir}/note.txt", f"/download/{a.id}/../../jobs.sqlite",
                 f"/download/{a.id + 99}/out/note.txt", f"/download/jobs/{b.id}/out/note.txt"):
        r = client.get(path, follow_redirects=True)
        # 404, or (a double slash matches no download route) Dash's index page: never a file
        assert r.status_code == 404 or r.data.startswith(b"<!DOCTYPE html>"), path
        assert "Content-Disposition" not in r.headers and b"job 1" not in r.data, path


def test_model_folder_downloads_as_one_zip(two_jobs):
    from viz.app import create_app

    state, (a, _), runs = two_jobs
    client = create_app(state).server.test_client()
    r = client.get(f"/archive/{a.id}/model")
    assert r.status_code == 200 and r.mimetype == "application/zip"
    assert f"job{a.id}-model.zip" in r.headers["Content-Disposition"]
    zf = zipfile.ZipFile(io.BytesIO(r.data))
    assert zf.testzip() is None
    assert sorted(zf.namelist()) == [f"job{a.id}-model/config.json", f"job{a.id}-model/model.safetensors"]
    assert zf.read(f"job{a.id}-model/model.safetensors") == (a.out_dir / "model" / "model.safetensors").read_bytes()
    assert client.get(f"/archive/{a.id}/missing").status_code == 404
    assert client.get(f"/archive/{a.id + 99}/model").status_code == 404


def test_printed_address_is_one_a_browser_can_open():
    """A wildcard bind is printed as the loopback address and the host name, never 0.0.0.0."""
    import socket

    from viz.access import open_urls

    urls = open_urls("0.0.0.0", 8050, "tok" * 8)
    assert urls == [f"http://127.0.0.1:8050/?token={'tok' * 8}", f"http://{socket.gethostname()}:8050/?token={'tok' * 8}"]
    assert all("0.0.0.0" not in u for u in open_urls("0.0.0.0", 8050) + open_urls("::", 8050))
    assert open_urls("gpu-box", 8050) == ["http://gpu-box:8050/"]
    assert open_urls("127.0.0.1", 8050) == ["http://127.0.0.1:8050/"]
