"""One set of input rules (trustfid/inputs/rules.py, array_rules.py) for the three paths that read what
users send: the engine's readers, the service's upload checks and the Python client's folder upload.
The same files must give the same images, counts and FID whichever path they take, and the same
refusals. Real files, the real service (tests/support/service.py), no mocks."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.ingest.screening import check_file
from app.settings import Settings
from tests.support import ROOT
from tests.support.images import pngs, write_images
from tests.support.presets import FAST_OPTIONS
from tests.support.service import KEY_A, err, upload
from trustfid.errors import InputError, TooLargeError
from trustfid.inputs import open_images
from trustfid.inputs.rules import kind_of, list_folder


def _ct_small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm", download=False))


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory) -> Path:
    """How a scanner export looks next to ordinary images: IM0001 (no extension) and two PNGs."""
    d = write_images(tmp_path_factory.mktemp("scan") / "set", 2, seed=5)
    shutil.copy(_ct_small(), d / "IM0001")
    return d


def _staged(stack, name: str) -> list[Path]:
    return [p for p in (stack.data_dir / "staging").glob("*/*/*") if p.name == name]


# --- suffixes the engine reads are accepted on upload --------------------------------------------


def test_jfif_jpe_and_dib_are_read_by_the_engine_and_scored_through_upload(stack, image_sets, tmp_path):
    rng = np.random.default_rng(3)
    files = []
    for name, fmt in (("photo.jfif", "JPEG"), ("photo2.jpe", "JPEG"), ("bitmap.dib", "DIB")):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(tmp_path / name, format=fmt)
        files.append(tmp_path / name)
    s = open_images(tmp_path)
    assert [n for n, _ in s] == ["bitmap.dib", "photo.jfif", "photo2.jpe"] and s.skipped == []

    with stack.client() as c:
        r = upload(c, files, pngs(image_sets["generated"]), FAST_OPTIONS)
        assert r.status_code == 202, r.text
        rec = stack.wait_job(r.json()["id"])
        assert rec["state"] == "succeeded", rec
        counts = c.get(f"/v1/jobs/{rec['id']}/report").json()["counts"]
    assert counts["real"] == {"used": 3, "skipped": []}


# --- an extension-less DICOM counts the same through every path -----------------------------------


def test_extensionless_dicom_counts_the_same_in_engine_upload_and_client(stack, image_sets, dicom_folder):
    from trustfid import Client, ScoreOptions, score

    real, gen = image_sets["real"], dicom_folder
    names = sorted(p.name for p in gen.iterdir())
    assert names == ["IM0001", "img_000.png", "img_001.png"]

    # (a) the engine, in-process: the scanner file is found by its bytes
    engine = score(real, gen, ScoreOptions(**{k: v for k, v in FAST_OPTIONS.items()
                                             if k not in ("device", "batch_size")}))
    assert engine.counts.generated.used == 3 and engine.counts.generated.skipped == []

    # (b) multipart upload of the three files: IM0001 is staged, sniffed and kept
    with stack.client() as c:
        r = upload(c, pngs(real), [gen / n for n in names], FAST_OPTIONS)
        assert r.status_code == 202, r.text
        assert r.json()["generated"]["files"] == 3
        rec = stack.wait_job(r.json()["id"])
        assert rec["state"] == "succeeded", rec
        uploaded = c.get(f"/v1/jobs/{rec['id']}/report").json()

    # (c) the Python client on the folder: it packs the files the engine reads
    with Client(stack.url, api_key=KEY_A) as client:
        via_client = client.submit(real, gen, FAST_OPTIONS, wait=True).wait(timeout=300).report()

    for side, want in (("real", 4), ("generated", 3)):
        assert uploaded["counts"][side]["used"] == want, (side, uploaded["counts"])
        assert getattr(via_client.counts, side).used == want
        assert getattr(engine.counts, side).used == want
    assert uploaded["fid"] == pytest.approx(via_client.fid, rel=1e-9)
    assert engine.fid == pytest.approx(uploaded["fid"], rel=1e-9)
    most = {u.name for u in via_client.latent_variance.generated.most_uncertain}
    assert most == set(names)  # the same names: the DICOM file keeps its name through the tar


def test_client_packs_exactly_the_files_the_engine_reads(tmp_path, dicom_folder):
    folder = tmp_path / "set"
    shutil.copytree(dicom_folder, folder)
    (folder / "notes.txt").write_text("captions")
    (folder / "README").write_text("not an image, no suffix")
    (folder / ".DS_Store").write_bytes(bytes(64))
    (folder / "sub").mkdir()
    (folder / "sub" / "linked.png").symlink_to(folder / "img_000.png")  # a link: packed as the file
    from trustfid.client import _prepare

    part = _prepare(folder, "generated")
    try:
        with tarfile.open(part.path) as tf:
            members = tf.getmembers()
    finally:
        part.close()
    assert sorted(m.name for m in members) == [n for n, _ in open_images(folder)]
    assert [m.name for m in members if not m.isreg()] == []  # the service refuses links in archives


def test_the_client_imports_without_numpy_pillow_or_torch():
    code = ("import sys\nfor m in ('numpy', 'PIL', 'torch'): sys.modules[m] = None\n"
            "from trustfid import Client\nfrom trustfid.inputs import rules, array_rules\n"
            "from trustfid.client import _prepare\nprint('imported')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "imported" in r.stdout, r.stderr


# --- what is not an image: refused on upload, passed over in a folder ----------------------------


def test_a_bare_named_non_image_is_refused_on_upload_and_ignored_in_a_folder(stack, image_sets, tmp_path):
    folder = write_images(tmp_path / "set", 2, seed=9)
    (folder / "notes").write_bytes(b"scanner export log, not pixels\n" * 10)
    s = open_images(folder)
    assert [n for n, _ in s] == ["img_000.png", "img_001.png"] and s.skipped == []

    with stack.client() as c:
        r = upload(c, pngs(folder) + [folder / "notes"], pngs(image_sets["generated"]))
    msg = err(r, 415, "unsupported_type")["message"]
    assert "'notes'" in msg and msg.startswith("real:") and "first bytes" in msg
    assert _staged(stack, "notes") == []  # the refused upload's staging is gone


def test_names_the_engine_passes_over_are_refused_at_once_on_upload(stack, image_sets, tmp_path):
    folder = write_images(tmp_path / "set", 1, seed=4)
    png = (folder / "img_000.png").read_bytes()
    (folder / "._img_000.png").write_bytes(png)  # a macOS resource fork: hidden
    (folder / "caption.txt").write_bytes(png)  # a caption suffix is never opened, whatever it holds
    assert [n for n, _ in open_images(folder)] == ["img_000.png"]
    with stack.client() as c:
        msg = err(upload(c, [("._img_000.png", png)], pngs(image_sets["generated"])), 415, "unsupported_type")["message"]
        assert "hidden" in msg and "._img_000.png" in msg
        msg = err(upload(c, [("caption.txt", png)], pngs(image_sets["generated"])), 415, "unsupported_type")["message"]
        assert "'*.txt'" in msg


# --- archives and arrays: the same verdicts on both sides ------------------------------------------


def same_verdict(engine: pytest.ExceptionInfo, upload_check: pytest.ExceptionInfo, folder: Path) -> None:
    """The upload check says what the engine says, of the file's name instead of its path."""
    assert upload_check.value.code == engine.value.code
    assert upload_check.value.message == "real: " + engine.value.message.replace(f"{folder}/", "")


def _settings(**kw) -> Settings:
    """The limits of the test service (tests/support/service.py Stack)."""
    return Settings(**{"max_images": 60, "max_pixels": 512 * 512, "max_archive_members": 100,
                       "max_expanded_bytes": 16 * 2**20, "max_compression_ratio": 50, **kw})


def test_bzip2_tars_are_refused_on_upload_as_by_the_engine(tmp_path):
    with tarfile.open(tmp_path / "set.tar", "w:bz2") as tf:
        info = tarfile.TarInfo("a.png")
        tf.addfile(info, io.BytesIO(b""))
    with pytest.raises(InputError, match="bzip2") as engine:
        open_images(tmp_path / "set.tar")
    with pytest.raises(InputError) as upload_check:
        check_file(tmp_path / "set.tar", _settings(), "real")
    assert engine.value.code == "bad_archive"
    same_verdict(engine, upload_check, tmp_path)


def test_zip_bombs_give_one_verdict_whoever_checks(tmp_path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.png", bytes(20 * 2**20))
    with pytest.raises(TooLargeError) as upload_check:
        check_file(tmp_path / "bomb.zip", _settings(), "real")
    with pytest.raises(TooLargeError) as engine:
        open_images(tmp_path / "bomb.zip", max_compression_ratio=50)
    assert engine.value.code == "archive_bomb" and "expands" in engine.value.message
    same_verdict(engine, upload_check, tmp_path)
    assert len(open_images(tmp_path / "bomb.zip")) == 1  # without the ratio limit the engine lists it


def _zeros_tar_gz(path: Path, members: dict[str, int]) -> Path:
    """A .tar.gz of members of zeros (name -> size), streamed: nothing that size is held in memory."""
    class Zeros:
        def __init__(self, n):
            self.left = n

        def read(self, k=-1):
            k = self.left if k < 0 else min(k, self.left)
            self.left -= k
            return bytes(k)

    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for name, size in members.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tf.addfile(info, Zeros(size))
    return path


def test_a_tar_gz_bomb_of_one_member_is_413_before_anything_is_counted(tmp_path):
    """One 300 MiB member of zeros named bomb.png: the expansion ratio is checked before the count, so
    the answer is archive_bomb (413), not "too few images" (422), on upload as in the engine."""
    bomb = _zeros_tar_gz(tmp_path / "bomb.tar.gz", {"bomb.png": 300 * 2**20})
    assert bomb.stat().st_size < 2 * 2**20
    limits = {"max_expanded_bytes": 8 * 2**30, "max_member_bytes": 2**30}  # the defaults: only the ratio can stop it
    with pytest.raises(TooLargeError) as upload_check:
        check_file(bomb, _settings(**limits), "real")
    with pytest.raises(TooLargeError) as engine:
        open_images(bomb, max_compression_ratio=50, **limits)
    assert upload_check.value.code == "archive_bomb" and "fold" in upload_check.value.message
    same_verdict(engine, upload_check, tmp_path)


def test_a_member_whose_first_bytes_are_not_its_formats_is_not_a_usable_image(tmp_path):
    """In an archive as in a folder, 'fake.png' holding text does not count towards the two images a
    set needs; the refusal names it and why."""
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    for name in ("set.zip", "set.tar"):
        members = {"good.png": png.getvalue(), "fake.png": b"this is a caption, not a picture"}
        if name.endswith(".zip"):
            with zipfile.ZipFile(tmp_path / name, "w") as zf:
                for n, data in members.items():
                    zf.writestr(n, data)
        else:
            with tarfile.open(tmp_path / name, "w") as tf:
                for n, data in members.items():
                    info = tarfile.TarInfo(n)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        with pytest.raises(InputError) as upload_check:
            check_file(tmp_path / name, _settings(), "real")
        with pytest.raises(InputError) as engine:
            open_images(tmp_path / name).check_usable("real", 2)
        for e in (upload_check, engine):
            assert e.value.code == "too_few_images" and "has 1 usable image" in e.value.message, e.value.message
            assert "fake.png (not a PNG file (its first bytes say otherwise))" in e.value.message


def test_unsafe_member_names_the_engine_skips_are_refused_on_upload(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    for evil in ("C:/windows/x.png", "..\\up.png", "/etc/abs.png"):
        with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
            zf.writestr("ok.png", png.getvalue())
            zf.writestr(evil, png.getvalue())
        s = open_images(tmp_path / "evil.zip")
        assert [n for n, _ in s] == ["ok.png"]
        assert [k.name for k in s.skipped] == [evil] and "unsafe member name" in s.skipped[0].reason
        with pytest.raises(InputError) as e:
            check_file(tmp_path / "evil.zip", _settings(), "real")
        assert e.value.code == "unsafe_archive" and s.skipped[0].reason in e.value.message


def test_arrays_the_engine_refuses_are_refused_on_upload_and_statistics_pass(tmp_path):
    np.save(tmp_path / "ints.npy", np.zeros((2, 8, 8, 3), np.int64))
    np.save(tmp_path / "one.npy", np.zeros((8, 8, 3), np.uint8))
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 8, 8, 3), np.uint8), b=np.zeros((2, 8, 8, 3), np.uint8))
    np.save(tmp_path / "big.npy", np.zeros((1, 600, 600), np.uint8))
    for name, error, needle in (("ints.npy", InputError, "uint8"), ("one.npy", InputError, "array[None]"),
                                ("two.npz", InputError, "'images'"), ("big.npy", TooLargeError, "pixels")):
        with pytest.raises(error) as engine:
            open_images(tmp_path / name, max_pixels=512 * 512)
        with pytest.raises(error) as upload_check:
            check_file(tmp_path / name, _settings(), "real")
        assert needle in engine.value.message, name
        same_verdict(engine, upload_check, tmp_path)

    mu, sigma = np.zeros(2048), np.eye(2048)
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    check_file(tmp_path / "stats.npz", _settings(max_expanded_bytes=2**30), "real")  # statistics are a set too
    np.savez(tmp_path / "images.npz", images=np.zeros((3, 8, 8, 3), np.uint8))
    check_file(tmp_path / "images.npz", _settings(), "real")


# --- the rule itself ------------------------------------------------------------------------------


def test_kind_of_sniffs_only_what_the_name_leaves_open(tmp_path):
    calls = []

    def head():
        calls.append(1)
        return _ct_small().read_bytes()[:132]

    assert kind_of("IM0001", head) == "image" and calls == [1]
    assert kind_of("scan.JFIF", head) == "image" and kind_of("a/b.tar.gz", head) == "archive"
    assert kind_of("x.npz", head) == "array" and kind_of("notes.txt", head) is None
    assert kind_of(".git/x.png", head) is None and kind_of("__MACOSX/x.png", head) is None
    assert calls == [1]  # the name decided every other case
    assert kind_of("notes.txt", head, member=False) == "image"  # a file named as a whole set is sniffed
    assert kind_of("IM0002") == "unknown"
    assert kind_of("IM0003", lambda: b"plain text") is None


def test_list_folder_follows_links_once_and_reports_broken_ones(tmp_path):
    write_images(tmp_path / "a", 1, seed=1)
    (tmp_path / "again").symlink_to(tmp_path / "a")
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
    entries = list_folder(tmp_path, "set")
    assert [(n, p is not None, r) for n, p, r in entries] == [
        ("a/img_000.png", True, None), ("gone.png", False, "broken symbolic link")]
