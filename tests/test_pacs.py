"""Image sets in a PACS, read over DICOMweb from a real Orthanc (tests/support/orthanc.py): a series scored from
the PACS gives the FID, FRD and counts of the same DICOM files scored from a folder, on the CLI and on
the service (real Redis, worker and API); a whole study registers as a reference; every refusal is
named, at submission where it can be, with the host and the UID and never the credentials; the limits
hold while instances stream in; nothing retrieved outlives its job or call; and the job's report is
served as FHIR by the route, the client and the CLI."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT
from tests.support.oracles import fhir_matches
from tests.support.orthanc import PASSWORD, USER, Orthanc, as_folder, ct_series, sr_series, uid
from tests.support.presets import FAST_OPTIONS
from tests.support.service import KEY_A, Stack, wait_for
from trustfid.errors import InputError, TooLargeError
from trustfid.inputs.dicomweb import DicomWebUri, Pacs
from trustfid.settings import DicomWebServer

pytestmark = pytest.mark.service

STUDY = uid("study")
REAL, GENERATED, SR, NOWHERE = uid("series", "real"), uid("series", "generated"), uid("series", "sr"), uid("none")
OPTIONS = {**FAST_OPTIONS, "metrics": ["fid", "frd"]}
SECRETS = (PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc holding one study: 6 CT images (the real series), 3 single-frame CT images and one of 3
    frames (the generated series), and a Basic Text SR; the same images as folders of files."""
    folder = tmp_path_factory.mktemp("orthanc")
    o = Orthanc(folder)
    try:  # stopped however the set-up ends
        real = ct_series(STUDY, REAL, seed=1, singles=6)
        generated = ct_series(STUDY, GENERATED, seed=2, singles=3, frames=3, blur=True)
        o.store(real + generated + sr_series(STUDY, SR))
        o.folders = {"real": as_folder(real, folder / "real"),
                     "generated": as_folder(generated, folder / "generated")}
        yield o
    finally:
        o.stop()


def uri(o: Orthanc, series: str | None = None, study: str = STUDY, scheme: str = "dicomweb+http",
        port: int | None = None) -> str:
    return (f"{scheme}://127.0.0.1:{port or o.port}/dicom-web/studies/{study}"
            + (f"/series/{series}" if series else ""))


def configured(o: Orthanc, **sign_in) -> str:
    """TRUSTFID_DICOMWEB_SERVERS for this Orthanc, signing in with its user (or ``sign_in``)."""
    return json.dumps([{"url": o.dicomweb, **(sign_in or {"username": USER, "password": PASSWORD})}])


def no_secret(text: str) -> str:
    for secret in SECRETS:
        assert secret not in text, "a credential leaked"
    return text


def same_numbers(got: dict, want: dict) -> None:
    assert got["fid"] == want["fid"] and got["counts"] == want["counts"]
    assert got["frd"]["value"] == want["frd"]["value"]
    assert got["frd"]["distance_squared"] == want["frd"]["distance_squared"]
    assert got["frd"]["real"]["used"] == want["frd"]["real"]["used"] == 6
    assert got["kid"] == want["kid"] and got["fid_mc"]["samples"] == want["fid_mc"]["samples"]


@pytest.fixture(scope="module")
def folder_report(pacs) -> dict:
    """The same DICOM files scored from folders, in this process."""
    from trustfid import score

    report = score(pacs.folders["real"], pacs.folders["generated"], OPTIONS)
    assert report.counts.real.used == 6 and report.counts.generated.used == 6  # 3 files + 3 frames of one
    assert report.intensity["real"] and report.frd is not None
    return json.loads(report.model_dump_json())


# --- the CLI and score(): the operator's own reads ----------------------------------------------------

def cli(args: list[str], env: dict, tmp: Path) -> subprocess.CompletedProcess:
    (tmp / "tmp").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, **env, "TMPDIR": str(tmp / "tmp")})


def test_the_cli_scores_a_pacs_series_as_the_same_files_from_a_folder(pacs, folder_report, tmp_path):
    flags = ["--passes", "2", "--bootstrap", "5", "--top-k", "3", "--batch-size", "4", "--device", "cpu", "--seed",
             "7", "--metrics", "fid,frd", "-q"]
    r = cli(["score", uri(pacs, REAL), uri(pacs, GENERATED), "--json", str(tmp_path / "report.json"),
             "--format", "fhir", *flags], {"TRUSTFID_DICOMWEB_SERVERS": configured(pacs)}, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    same_numbers(report, folder_report)
    fhir_matches(r.stdout, report)  # --format fhir: the same builder as the service's
    assert not list((tmp_path / "tmp").glob("trustfid-dicomweb-*"))  # the retrieved instances went with the call


def test_the_library_reads_a_pacs_set_into_a_temporary_folder_it_removes_however_the_call_ends(
        pacs, tmp_path, monkeypatch):
    import tempfile

    from trustfid.inputs.dicomweb import local_copies
    from trustfid.settings import get_engine_settings

    monkeypatch.setenv("TRUSTFID_DICOMWEB_SERVERS", configured(pacs))  # the operator's settings sign it in
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    get_engine_settings.cache_clear()
    try:
        with local_copies({"real": uri(pacs, REAL), "generated": "other/folder"}) as local:
            assert local["generated"] == "other/folder"  # anything but a DICOMweb URI is left as given
            assert local["real"].is_relative_to(tmp_path) and len(list(local["real"].rglob("*.dcm"))) == 6
        assert not local["real"].exists()
        with pytest.raises(RuntimeError), local_copies({"real": uri(pacs, REAL)}) as local:
            raise RuntimeError("the engine failed half-way")
        assert not local["real"].exists() and not list(tmp_path.glob("trustfid-dicomweb-*"))
    finally:
        get_engine_settings.cache_clear()


def test_the_cli_says_the_pacs_refused_its_credentials_without_echoing_them(pacs, tmp_path):
    r = cli(["score", uri(pacs, REAL), uri(pacs, GENERATED), "-q"],
            {"TRUSTFID_DICOMWEB_SERVERS": configured(pacs, username=USER, password=PASSWORD + "-old")}, tmp_path)
    assert r.returncode == 2, r.stderr
    assert "refused" in r.stderr and f"127.0.0.1:{pacs.port}" in r.stderr and STUDY in r.stderr
    no_secret(r.stderr)
    assert PASSWORD + "-old" not in r.stderr and USER not in r.stderr


def test_the_byte_and_image_limits_hold_while_instances_stream_in(pacs, tmp_path):
    server = DicomWebServer(url=pacs.dicomweb, username=USER, password=PASSWORD)
    small = Pacs(servers=(server,), max_bytes=60_000, bytes_setting="TRUSTFID_MAX_UPLOAD_BYTES")
    with pytest.raises(TooLargeError) as e:  # six instances of ~40 kB: the limit strikes while they arrive
        small.fetch(uri(pacs, REAL), tmp_path / "fetched", "real")
    assert e.value.code == "upload_too_large" and "TRUSTFID_MAX_UPLOAD_BYTES" in e.value.message
    assert f"127.0.0.1:{pacs.port}" in e.value.message and REAL in e.value.message
    assert sum(p.stat().st_size for p in (tmp_path / "fetched").rglob("*.dcm")) <= 60_000
    few = Pacs(servers=(server,), max_instances=5)
    with pytest.raises(TooLargeError) as e:
        few.images(uri(pacs, REAL), "real")
    assert e.value.code == "too_large" and "TRUSTFID_MAX_IMAGES" in e.value.message and REAL in e.value.message


def test_no_credential_reaches_a_log_line_even_at_debug_level(pacs, tmp_path, caplog):
    server = DicomWebServer(url=pacs.dicomweb, username=USER, password=PASSWORD)
    with caplog.at_level(logging.DEBUG):
        out = Pacs(servers=(server,)).fetch(uri(pacs, GENERATED), tmp_path / "fetched", "generated")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.dcm")) == sorted(
        f"{GENERATED}/{uid(GENERATED, i)}.dcm" for i in range(4))  # named by UID, nothing the PACS chose
    assert "GET" in caplog.text  # dicomweb-client and urllib3 did log their requests
    no_secret(caplog.text)
    assert repr(server).count("**********") == 1 and PASSWORD not in repr(server)


def test_uris_that_are_no_pacs_set_are_refused_without_echoing_a_secret():
    for bad, words in ((f"dicomweb+https://u:{PASSWORD}@pacs.example.org/dicom-web/studies/1.2", "credentials"),
                       ("dicomweb+https://pacs.example.org/dicom-web/series/1.2", "names no study"),
                       ("dicomweb+https://pacs.example.org/dicom-web/studies/1.2/series/..", "not a DICOM series UID"),
                       ("dicomweb+https://pacs.example.org/studies/1.2/series/3/../../x", "names no study"),
                       ("dicomweb+https://pacs.example.org/studies/1.2?x=1", "no query")):
        with pytest.raises(InputError) as e:
            DicomWebUri.parse(bad, "real")
        assert e.value.code == "forbidden_uri" and words in e.value.message, e.value.message
        no_secret(e.value.message)
    with pytest.raises(Exception) as e:  # a server configured with credentials in its URL: refused, not echoed
        DicomWebServer(url=f"https://{USER}:{PASSWORD}@pacs.example.org/dicom-web")
    no_secret(str(e.value))


# --- the service ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pacs_stack(redis_url, tmp_path_factory, pacs):
    s = Stack(redis_url, tmp_path_factory.mktemp("pacs-stack"), TRUSTFID_DICOMWEB_SERVERS=configured(pacs)).start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def pacs_job(pacs, pacs_stack) -> dict:
    with pacs_stack.client() as c:
        r = c.post("/v1/jobs", json={"real": {"uri": uri(pacs, REAL)}, "generated": {"uri": uri(pacs, GENERATED)},
                                     "options": OPTIONS})
        assert r.status_code == 202, r.text
        accepted = r.json()
        record = pacs_stack.wait_job(accepted["id"])
        assert record["state"] == "succeeded", record
        report = c.get(f"/v1/jobs/{record['id']}/report")
        assert report.status_code == 200, report.text
    return {"accepted": accepted, "record": record, "report": report.json(), "report_text": report.text}


def test_the_service_scores_a_pacs_series_as_the_same_files_from_a_folder(pacs_job, folder_report):
    # Listed at submission: the record says how many instances each side has (the generated series holds
    # 3 single-frame instances and one of 3 frames).
    assert pacs_job["accepted"]["real"]["files"] == 6 and pacs_job["accepted"]["generated"]["files"] == 4
    same_numbers(pacs_job["report"], folder_report)


def test_the_report_as_fhir_from_the_route_the_client_and_submit(pacs, pacs_job, pacs_stack, tmp_path):
    from trustfid import Client

    job_id = pacs_job["record"]["id"]
    with pacs_stack.client() as c:
        r = c.get(f"/v1/jobs/{job_id}/report", params={"format": "fhir"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    observations = fhir_matches(r.text, pacs_job["report"], job_id)
    assert set(observations) == {"fid", "kid", "frd"}
    with Client(pacs_stack.url, KEY_A) as client:
        assert client.job(job_id).fhir().model_dump_json(indent=2) == r.text
    # `trustfid submit --wait --format fhir`: the same document for the job it ran, as the route serves it
    p = subprocess.run([sys.executable, "-m", "app.cli", "submit", uri(pacs, REAL),
                        uri(pacs, GENERATED), "--options", json.dumps(OPTIONS), "--wait", "-q",
                        "--format", "fhir"], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, "TRUSTFID_URL": pacs_stack.url, "TRUSTFID_API_KEY": KEY_A})
    assert p.returncode == 0, p.stderr[-3000:]
    submitted = json.loads(p.stdout)["identifier"]["value"]
    with pacs_stack.client() as c:
        assert p.stdout.strip() == c.get(f"/v1/jobs/{submitted}/report", params={"format": "fhir"}).text
    with pacs_stack.client() as c:
        bad = c.get(f"/v1/jobs/{job_id}/report", params={"format": "xml"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_no_credential_is_in_a_record_report_or_log_of_the_service(pacs_job, pacs_stack):
    with pacs_stack.client() as c:
        record = c.get(f"/v1/jobs/{pacs_job['record']['id']}").text
        fhir = c.get(f"/v1/jobs/{pacs_job['record']['id']}/report", params={"format": "fhir"}).text
    for text in (record, pacs_job["report_text"], fhir, pacs_stack.log("api.log"), pacs_stack.log("worker1.log")):
        no_secret(text)


def test_retrieved_instances_are_removed_when_the_job_ends(pacs_job, pacs_stack):
    staged = pacs_stack.data_dir / "staging" / pacs_job["record"]["id"]
    wait_for(lambda: not staged.exists(), timeout=30, what=f"{staged} removed after the job ended")


def test_a_whole_study_registers_as_a_reference_without_its_sr(pacs, pacs_stack):
    from trustfid import Client

    with Client(pacs_stack.url, KEY_A) as client:  # the client sends a DICOMweb URI for the service to read
        ref = client.register_reference(uri(pacs), FAST_OPTIONS, wait=True)
        assert ref.status().source.files == 10  # 6 + 4 image instances, listed at submission; the SR is no image
        record = ref.wait(timeout=240).status()
    assert record.state == "succeeded" and record.images == 12, record  # every image and frame of both series


def refused(r: httpx.Response, status: int, code: str, *must: str) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    for text in must:
        assert text in error["message"], error["message"]
    return no_secret(error["message"])


def test_submission_refuses_unknown_hosts_unknown_uids_and_series_without_images(pacs, pacs_stack):
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    host = f"127.0.0.1:{other.getsockname()[1]}"
    with pacs_stack.client() as c:
        def submit(real: str):
            return c.post("/v1/jobs", json={"real": {"uri": real}, "generated": {"uri": uri(pacs, GENERATED)},
                                            "options": FAST_OPTIONS})

        def job_ids() -> set[str]:  # this key's jobs in the Redis the suite shares
            return {j["id"] for j in c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]}

        before = job_ids()

        refused(submit(uri(pacs, REAL, port=other.getsockname()[1])), 422, "unknown_pacs", host, REAL,
                "TRUSTFID_DICOMWEB_SERVERS")
        # the configured host over https, where the operator configured plain http: another server
        refused(submit(uri(pacs, REAL, scheme="dicomweb+https")), 422, "unknown_pacs", f"127.0.0.1:{pacs.port}",
                "plain http")
        refused(submit(uri(pacs, study=NOWHERE)), 422, "pacs_not_found", f"127.0.0.1:{pacs.port}", NOWHERE)
        refused(submit(uri(pacs, NOWHERE)), 422, "pacs_not_found", f"127.0.0.1:{pacs.port}", NOWHERE, STUDY)
        refused(submit(uri(pacs, SR)), 422, "pacs_no_images", f"127.0.0.1:{pacs.port}", SR, "Basic Text SR Storage")
        assert job_ids() == before  # none of the refused was accepted
    other.close()


class Silent:
    """A server that accepts connections and never answers: a PACS that hangs. Counts the connections."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_refused_credentials_and_a_pacs_that_is_down_or_hangs_are_named_at_submission(
        pacs, redis_url, tmp_path):
    """An API whose PACS are: Orthanc with a wrong password (read from a secret file), a port where nothing
    listens, and a server that never answers; each request is retried once (1 s timeout)."""
    silent, nothing = Silent(), socket.socket()
    nothing.bind(("127.0.0.1", 0))
    down = nothing.getsockname()[1]
    nothing.close()
    secret = tmp_path / "pacs-password"
    secret.write_text(PASSWORD + "-expired\n")
    servers = [{"url": pacs.dicomweb, "username": USER, "password_file": str(secret)},
               {"url": f"http://127.0.0.1:{down}/dicom-web"},
               {"url": f"http://127.0.0.1:{silent.port}/dicom-web", "token": PASSWORD}]
    s = Stack(redis_url, tmp_path / "stack", TRUSTFID_DICOMWEB_SERVERS=json.dumps(servers),
              TRUSTFID_DICOMWEB_TIMEOUT_S="1", TRUSTFID_DICOMWEB_RETRIES="1")
    try:
        s.start_api()  # no worker: each of these is refused before anything is queued
        with s.client() as c:
            def submit(port: int, series: str = REAL):
                real = f"dicomweb+http://127.0.0.1:{port}/dicom-web/studies/{STUDY}/series/{series}"
                return c.post("/v1/jobs", json={"real": {"uri": real}, "generated": {"uri": real}})

            message = refused(submit(pacs.port), 502, "pacs_auth_failed", f"127.0.0.1:{pacs.port}", REAL, "refused",
                              "user name and password")
            assert "expired" not in message and USER not in message
            refused(submit(down), 503, "pacs_unreachable", f"127.0.0.1:{down}", REAL, "could not be connected",
                    "2 tries")
            refused(submit(silent.port), 503, "pacs_unreachable", f"127.0.0.1:{silent.port}", REAL,
                    "did not answer within 1 s", "2 tries")
            assert len(silent.accepted) == 2  # tried, then retried once after a backoff
        no_secret(s.log("api.log"))
        assert "expired" not in s.log("api.log")
    finally:
        s.close()
        silent.close()
