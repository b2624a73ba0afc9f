"""Inputs by URI (file:// under allowed roots, http(s) from allowed hosts) and signed callbacks.

The dataset host and the callback receiver are one small HTTP server of this test on 127.0.0.1: they
stand in for third-party machines we cannot reach here. The stack allows private addresses for it
(TRUSTFID_ALLOW_PRIVATE_URLS); the shared stack, which does not, refuses them."""

from __future__ import annotations

import json
import os
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.callback import verify
from tests.support.images import pngs
from tests.support.presets import FAST_OPTIONS
from tests.support.service import upload

SECRET = "callback-secret"


@pytest.fixture(scope="module")
def site(tmp_path_factory, image_sets):
    """Serves /real.zip; records POSTs to /hook."""
    root = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(root / "real.zip", "w") as zf:
        for p in pngs(image_sets["real"]):
            zf.write(p, f"imgs/{p.name}")
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self.send_response(404)
                self.end_headers()
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()


@pytest.fixture(scope="module")
def uri_stack(redis_url, tmp_path_factory, image_sets):
    from tests.support.service import Stack

    s = Stack(redis_url, tmp_path_factory.mktemp("uristack"), TRUSTFID_FILE_ROOTS=str(image_sets["real"].parent),
              TRUSTFID_URL_HOSTS="127.0.0.1", TRUSTFID_ALLOW_PRIVATE_URLS="true", TRUSTFID_CALLBACK_SECRET=SECRET)
    s.start_api()
    s.start_worker()
    s.wait_ready()
    yield s
    s.close()


def test_file_and_http_inputs_with_a_signed_callback(uri_stack, site, image_sets):
    base, received = site
    body = {"real": {"uri": f"{base}/real.zip"},
            "generated": {"uri": image_sets["generated"].as_uri()},
            "options": {**FAST_OPTIONS, "callback_url": f"{base}/hook", "tags": ["uri"]}}
    with uri_stack.client() as c:
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        rec = uri_stack.wait_job(r.json()["id"])
        assert rec["state"] == "succeeded", rec
        assert rec["real"] == {"kind": "uri", "uri": f"{base}/real.zip", "reference_id": None, "files": None,
                               "bytes": None}
        report = c.get(f"/v1/jobs/{rec['id']}/report").json()
    assert report["counts"]["real"]["used"] == 4 and report["counts"]["generated"]["used"] == 4
    # The callback follows the final record write; give it a moment to arrive.
    deadline = time.monotonic() + 60
    while not (hooks := [(h, b) for h, b in received if json.loads(b)["id"] == rec["id"]]):
        assert time.monotonic() < deadline, "no callback arrived"
        time.sleep(0.1)
    assert len(hooks) == 1
    headers, raw = hooks[0]
    headers = {k.lower(): v for k, v in headers.items()}
    assert verify(SECRET, headers["x-trustfid-timestamp"], raw, headers["x-trustfid-signature"])
    assert not verify("wrong", headers["x-trustfid-timestamp"], raw, headers["x-trustfid-signature"])
    hooked = json.loads(raw)
    assert hooked["state"] == "succeeded" and hooked["fid"] == report["fid"]


def test_missing_remote_file_fails_the_job_with_a_reason(uri_stack, site, image_sets):
    base, _ = site
    with uri_stack.client() as c:
        r = c.post("/v1/jobs", json={"real": {"uri": f"{base}/nope.zip"},
                                     "generated": {"uri": image_sets["generated"].as_uri()}, "options": FAST_OPTIONS})
        rec = uri_stack.wait_job(r.json()["id"])
    assert rec["state"] == "failed" and rec["error"]["code"] == "fetch_failed" and "404" in rec["error"]["message"]


def test_file_uris_stay_under_their_roots(uri_stack, image_sets, tmp_path):
    link = image_sets["real"].parent / "escape"
    if not link.exists():
        os.symlink("/etc", link)
    with uri_stack.client() as c:
        for uri in ["file:///etc/passwd", f"{image_sets['real'].as_uri()}/../../../../etc", link.as_uri(),
                    "file://otherhost/data"]:
            r = c.post("/v1/jobs", json={"real": {"uri": uri}, "generated": {"uri": uri}})
            assert r.status_code == 422 and r.json()["error"]["code"] == "forbidden_uri", (uri, r.text)


def test_private_addresses_are_refused_unless_allowed(stack, site, image_sets):
    base, _ = site
    port = base.rsplit(":", 1)[1]
    with stack.client() as c:  # localhost is an allowed host there, but it resolves to 127.0.0.1
        for uri in [f"http://localhost:{port}/real.zip", f"{base}/real.zip"]:
            r = c.post("/v1/jobs", json={"real": {"uri": uri}, "generated": {"uri": uri}})
            assert r.status_code == 422 and r.json()["error"]["code"] == "forbidden_uri", r.text
        r = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]), {"callback_url": f"{base}/hook"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "forbidden_uri"
        assert "callback_url" in r.json()["error"]["message"]
