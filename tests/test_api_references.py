"""References: register a real set once, then score against it by id; with the client."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.images import pngs
from tests.support.presets import FAST_OPTIONS
from tests.support.service import KEY_A, KEY_B, upload
from trustfid.client import Client, ServiceError


@pytest.fixture(scope="module")
def reference(stack, image_sets):
    with Client(stack.url, KEY_A) as client:
        ref = client.register_reference(image_sets["real"], FAST_OPTIONS, name="real set")
        rec = ref.wait(timeout=240).status()
    return rec


@pytest.fixture(scope="module")
def direct_report(stack, image_sets):
    """The report of the plain upload job: real and generated as image files."""
    with stack.client() as c:
        job = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]), FAST_OPTIONS).json()["id"]
        assert stack.wait_job(job)["state"] == "succeeded"
        return c.get(f"/v1/jobs/{job}/report").json()


def test_register_and_score_against_a_reference(stack, reference, image_sets, direct_report):
    assert reference.state == "succeeded" and reference.name == "real set"
    assert reference.images == 4 and len(reference.fingerprint) == 64
    with stack.client() as c:
        listed = c.get("/v1/references").json()["references"]
        assert reference.id in [r["id"] for r in listed]
        # JSON: the reference by id, the generated set by... an upload in the same form.
        r = c.post("/v1/jobs", data={"real": f'{{"reference_id": "{reference.id}"}}'},
                   files=[("generated", (p.name, p.read_bytes())) for p in pngs(image_sets["generated"])])
        assert r.status_code == 202, r.text
        by_ref = stack.wait_job(r.json()["id"])
        assert by_ref["real"]["kind"] == "reference" and by_ref["options"]["seed"] == FAST_OPTIONS["seed"]
        a = c.get(f"/v1/jobs/{by_ref['id']}/report").json()
        b = direct_report
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-9, abs=1e-9)
    assert a["fid_mc"]["samples"] == pytest.approx(b["fid_mc"]["samples"], rel=1e-9, abs=1e-9)


def test_references_are_private_and_deletable(stack, image_sets):
    with Client(stack.url, KEY_A) as client:
        ref = client.register_reference(image_sets["real"], FAST_OPTIONS).wait(timeout=240)
    with stack.client(KEY_B) as c:
        assert c.get(f"/v1/references/{ref.id}").status_code == 404
        r = c.post("/v1/jobs", json={"real": {"reference_id": ref.id}, "generated": {"reference_id": ref.id}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "unknown_reference"
    stats = stack.data_dir / "references" / f"{ref.id}.npz"
    assert stats.exists()
    with stack.client() as c:
        assert c.delete(f"/v1/references/{ref.id}").status_code == 204
        assert c.get(f"/v1/references/{ref.id}").status_code == 404
    assert not stats.exists()


def test_client_sends_arrays_and_tensors_and_copies_them(stack, image_sets, direct_report):
    from PIL import Image

    torch = pytest.importorskip("torch")
    arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs(image_sets["generated"])])
    with Client(stack.url, KEY_A) as client:
        job = client.submit(real=image_sets["real"], generated=arr, options=FAST_OPTIONS, tags=["client"])
        arr[:] = 0  # the training loop reuses its buffer at once; the job must not see that
        tensor = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in
                                            pngs(image_sets["generated"])])).permute(0, 3, 1, 2).float() / 255
        job2 = client.submit(real=image_sets["real"], generated=tensor, options=FAST_OPTIONS)
        r1 = job.wait(timeout=240).report()
        r2 = job2.wait(timeout=240).report()
        assert [j.id for j in client.jobs(tags=["client"])] == [job.id]
        # Same pixels as the uploaded PNGs (floats are rounded back to the same uint8): same FID.
        assert r1.fid == pytest.approx(direct_report["fid"], rel=1e-6)
        assert r2.fid == pytest.approx(direct_report["fid"], rel=1e-6)
        bad = client.submit(real=image_sets["real"], generated=image_sets["generated"], options={"passes": -3})
        with pytest.raises(ServiceError) as e:
            bad.status()
        assert e.value.status == 422 and e.value.code == "bad_options"
