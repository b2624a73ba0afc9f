"""Auth, limits and bad input: every error is {"error": {"code", "message"}} with the right status,
and nothing a caller sends gives a 500 or takes the worker down."""

from __future__ import annotations

import io
import tarfile
import uuid
import zipfile

import httpx
import numpy as np
import pytest

from app.auth import authenticate
from app.errors import AuthError
from app.settings import Settings
from tests.support.images import pngs
from tests.support.presets import FAST_OPTIONS
from tests.support.service import err, upload


def png_bytes(w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (120, 30, 200)).save(buf, "PNG")
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# --- auth ---------------------------------------------------------------------------------------


def test_missing_and_wrong_keys_are_401(stack):
    with stack.client(key=None) as c:
        r = c.get("/v1/jobs")
        err(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    with stack.client(key="not-a-key") as c:
        err(c.get("/v1/jobs"), 401, "unauthorized")
        err(c.post("/v1/jobs", json={}), 401)


def test_keyless_server_serves_loopback_clients_only(make_stack):
    s = make_stack(TRUSTFID_API_KEYS="")
    s.start_api()
    with s.client(key=None) as c:
        assert c.get("/v1/jobs").status_code == 200
    settings = Settings(api_keys=[])
    assert authenticate(settings, None, "127.0.0.1") == "anonymous"
    with pytest.raises(AuthError):
        authenticate(settings, None, "192.0.2.7")


def test_keys_are_kept_hashed():
    s = Settings(api_keys=["secret-one", "sha256:" + "ab" * 32])
    assert "secret-one" not in s.model_dump_json()
    assert authenticate(s, "Bearer secret-one", "192.0.2.7") != "anonymous"


# --- limits -------------------------------------------------------------------------------------


def test_upload_over_the_byte_limit_is_413(stack):
    big = b"\0" * (5 * 2**20)  # the stack allows 4 MiB
    with stack.client() as c:
        err(upload(c, [("a.png", big)], [("b.png", b"x")]), 413, "upload_too_large")

        # Chunked, without Content-Length: the limit holds while streaming.
        boundary = "b0undary"

        def body():
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"real\"; filename=\"a.npy\"\r\n"
                   "Content-Type: application/octet-stream\r\n\r\n").encode()
            for _ in range(80):
                yield b"\0" * 65536
            yield f"\r\n--{boundary}--\r\n".encode()

        r = c.post("/v1/jobs", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        err(r, 413, "upload_too_large")
    assert not any((stack.data_dir / "staging").glob("*/real/*")), "staged bytes of a refused upload remain"


def test_too_many_images_and_too_many_pixels_are_413(stack, image_sets):
    one = png_bytes(8, 8)
    with stack.client() as c:
        e = err(upload(c, [(f"{i}.png", one) for i in range(61)], pngs(image_sets["generated"])), 413)
        assert "60" in e["message"]
        e = err(upload(c, [("huge.png", png_bytes(1024, 1024))], pngs(image_sets["generated"])), 413)
        assert "pixels" in e["message"]


def test_zip_bomb_and_member_count_are_413(stack, image_sets):
    bomb = zip_bytes({"zeros.png": b"\0" * (20 * 2**20)})
    many = zip_bytes({f"{i}.png": b"x" for i in range(101)})
    with stack.client() as c:
        err(upload(c, [("bomb.zip", bomb)], pngs(image_sets["generated"])), 413, "archive_bomb")
        err(upload(c, [("many.zip", many)], pngs(image_sets["generated"])), 413, "too_many_members")


def test_path_traversal_and_links_in_archives_are_refused(stack, image_sets):
    evil = zip_bytes({"../../etc/evil.png": png_bytes(8, 8)})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("link.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with stack.client() as c:
        err(upload(c, [("evil.zip", evil)], pngs(image_sets["generated"])), 422, "unsafe_archive")
        err(upload(c, [("link.tar.gz", buf.getvalue())], pngs(image_sets["generated"])), 422, "unsafe_archive")


def test_an_archive_without_images_is_refused_at_submission_naming_what_it_holds(stack, image_sets):
    # Not queued to fail later in the worker as too_few_images: the 422 comes back with the upload.
    texts = zip_bytes({"a.txt": b"caption", "b.txt": b"caption", "c.txt": b"caption"})
    one = zip_bytes({"only.png": png_bytes(8, 8), "notes.txt": b"caption"})
    with stack.client() as c:
        ids = lambda: [j["id"] for j in c.get("/v1/jobs").json()["jobs"]]  # noqa: E731
        before = ids()
        e = err(upload(c, pngs(image_sets["real"]), [("texts.zip", texts)]), 422, "too_few_images")
        assert e["message"].startswith("generated: ") and "0 usable images in archive 'texts.zip'" in e["message"]
        assert "3 files skipped: a.txt, b.txt, c.txt — not images" in e["message"]
        e = err(upload(c, [("one.zip", one)], pngs(image_sets["generated"])), 422, "too_few_images")
        assert "real: " in e["message"] and "1 usable image in archive 'one.zip'" in e["message"]
        e = err(upload(c, pngs(image_sets["real"])[:1], pngs(image_sets["generated"])), 422, "too_few_images")
        assert "1 usable image;" in e["message"]
        assert ids() == before  # nothing was queued


def test_unsupported_types_are_415(stack, image_sets):
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with stack.client() as c:
        err(upload(c, [("x.exe", b"MZ")], pngs(image_sets["generated"])), 415, "unsupported_type")
        err(upload(c, [("pickle.npy", obj.getvalue())], pngs(image_sets["generated"])), 415, "unsupported_type")
        err(c.post("/v1/jobs", content=b"hello", headers={"Content-Type": "text/plain"}), 415, "unsupported_type")


def test_bad_forms_and_options_are_422(stack, image_sets):
    real, gen = pngs(image_sets["real"]), pngs(image_sets["generated"])
    with stack.client() as c:
        err(upload(c, real, []), 422, "missing_field")
        r = c.post("/v1/jobs", files=[(side, (f"{side}{i}.png", b"x")) for side in ("real", "generated") for i in (1, 2)],
                   data={"options": "{not json"})
        err(r, 422, "bad_options")
        e = err(upload(c, real, gen, {"passes": -1}), 422, "bad_options")
        assert "passes" in e["message"]
        err(upload(c, real, gen, {"dropout_at": ["Mixed_9z"]}), 422, "bad_options")
        err(upload(c, real, gen, {"bogus": 1}), 422, "bad_options")
        e = err(upload(c, real, gen, {"pases": 3}), 422, "bad_options")  # a typo names the option meant
        assert "pases: not a known field (did you mean 'passes'?)" in e["message"], e
        assert upload(c, real, gen, {**FAST_OPTIONS, "metrics": ["FID", " frd:auto"]}).status_code == 202
        for bad in (0, -3, 1.5, "two"):
            e = err(upload(c, real, gen, {"shard_size": bad}), 422, "bad_options")
            assert "shard_size" in e["message"]
        err(c.post("/v1/jobs", files=[("weights", ("a.png", b"x"))]), 422, "bad_field")
        err(c.post("/v1/jobs", content=b"--x\r\ngarbage", headers={"Content-Type": "multipart/form-data; boundary=x"}), 422)
        err(c.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"}), 422, "invalid_request")
        err(c.post("/v1/jobs", json={"real": {"uri": "file:///etc"}}), 422, "invalid_request")
        err(c.post("/v1/jobs", json={"real": {}, "generated": {"uri": "x"}}), 422)


def _has_s3fs() -> bool:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("uri", ["ftp://example.org/x.zip", "file:///etc/passwd", "http://example.org/x.zip",
                                 "gopher://127.0.0.1/x", "/etc/passwd", "http://user:pw@localhost/x.zip"]
                         + ([] if _has_s3fs() else ["s3://bucket/x.zip"]))
def test_uris_outside_the_rules_are_refused(stack, uri):
    with stack.client() as c:
        r = c.post("/v1/jobs", json={"real": {"uri": uri}, "generated": {"uri": uri}})
    err(r, 422, "forbidden_uri")


def test_unknown_things_are_404_in_the_error_shape(stack):
    with stack.client() as c:
        err(c.get("/v1/jobs/0123456789abcdef"), 404, "not_found")
        err(c.get("/v1/jobs/../../etc/passwd"), 404)
        err(c.delete("/v1/references/nope"), 404, "not_found")
        err(c.get("/v2/anything"), 404, "not_found")
        err(c.put("/v1/jobs"), 405, "method_not_allowed")
        err(c.get("/v1/jobs", params={"limit": 0}), 422, "invalid_request")
        err(c.post("/v1/jobs", json={"real": {"reference_id": "abc"}, "generated": {"reference_id": "abc"}}),
            422, "unknown_reference")


def test_rate_limit_per_key_is_429(make_stack, image_sets):
    key = f"rate-{uuid.uuid4().hex}"  # a key of its own: the budget is per key, across servers
    s = make_stack(TRUSTFID_RATE_LIMIT_PER_MINUTE="2", TRUSTFID_API_KEYS=f"{key},test-key-bob")
    s.start_api()
    real, gen = pngs(image_sets["real"])[:2], pngs(image_sets["generated"])[:2]  # the least a set may hold
    with s.client(key) as c:
        assert upload(c, real, gen).status_code == 202
        assert upload(c, real, gen).status_code == 202
        r = upload(c, real, gen)
        err(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) >= 1
    with s.client(key="test-key-bob") as c:  # another key has its own budget
        assert upload(c, real, gen).status_code == 202
        with s.client(key) as c2:
            err(upload(c2, real, gen), 429, "rate_limited")


def test_a_bad_job_fails_with_a_reason_and_the_worker_lives_on(stack, image_sets):
    garbage = [(f"broken{i}.png", b"\x89PNG\r\n\x1a\n not really") for i in range(3)]  # a PNG's first bytes only
    with stack.client() as c:
        r = upload(c, garbage, pngs(image_sets["generated"]), {**FAST_OPTIONS, "strict": True})
        assert r.status_code == 202, r.text
        rec = stack.wait_job(r.json()["id"])
        assert rec["state"] == "failed"
        assert rec["error"]["code"] not in ("internal", "worker_lost") and rec["error"]["message"], rec
        e = err(c.get(f"/v1/jobs/{rec['id']}/report"), 409, "job_failed")
        assert rec["error"]["code"] in e["message"]
        ok = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]), FAST_OPTIONS)
        assert stack.wait_job(ok.json()["id"])["state"] == "succeeded"


def test_openapi_lists_every_endpoint(stack):
    with httpx.Client(base_url=stack.url) as c:
        spec = c.get("/openapi.json").json()
        assert c.get("/docs").status_code == 200
    paths = spec["paths"]
    for path, methods in {"/v1/jobs": {"get", "post"}, "/v1/jobs/{job_id}": {"get", "delete"},
                          "/v1/jobs/{job_id}/report": {"get"}, "/v1/references": {"get", "post"},
                          "/v1/references/{ref_id}": {"get", "delete"}, "/healthz": {"get"},
                          "/readyz": {"get"}, "/metrics": {"get"}}.items():
        assert methods <= set(paths[path]), path
    assert "JobRecord" in spec["components"]["schemas"] and "Report" in spec["components"]["schemas"]
