"""Reading image sets (trustfid/inputs/): what a user gets out of folders, archives, arrays
and DICOM, how intensities are mapped, and what is skipped or refused. Fixtures are generated in
tmp_path; DICOM samples are the test files that ship inside the pydicom wheel."""

from __future__ import annotations

import gzip
import io
import shutil
import struct
import subprocess
import sys
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trustfid.errors import InputError, TooLargeError
from trustfid.inputs import open_images
from trustfid.inputs.gzindex import GzIndex, IndexedGzip

ROOT = Path(__file__).resolve().parent.parent


def pil_rgb(path) -> np.ndarray:
    """What pytorch-fid / clean-fid feed their networks for an 8-bit file."""
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float32)


def read_all(source, **kw):
    s = open_images(source, **kw)
    return s, dict(s)


def smooth(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 HxWx3 with structure (gradients + noise), so wrong channel order or offsets show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], -1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def dicom(name: str) -> Path:
    from pydicom.data import get_testdata_file

    p = get_testdata_file(name, download=False)
    if p is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    return Path(p)


# --- 8-bit images: the same numbers as the published FID tools ------------------------------------

def test_8bit_files_equal_pil_convert_rgb_in_every_mode(tmp_path):
    rgb = smooth(40, 56, 0)
    gray = rgb[..., 0]
    rgba = np.dstack([rgb, np.linspace(0, 255, 40 * 56).reshape(40, 56).astype(np.uint8)])
    files = {
        "rgb.png": Image.fromarray(rgb), "gray.png": Image.fromarray(gray), "rgba.png": Image.fromarray(rgba),
        "la.png": Image.fromarray(rgba[..., [0, 3]], "LA"), "bilevel.png": Image.fromarray(gray > 128),
        "palette.png": Image.fromarray(rgb).quantize(16), "palette.gif": Image.fromarray(rgb).quantize(64),
        "rgb.jpg": Image.fromarray(rgb), "gray.jpg": Image.fromarray(gray),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "rgb.bmp": Image.fromarray(rgb), "rgb.tif": Image.fromarray(rgb), "gray.tiff": Image.fromarray(gray),
        "lossy.webp": Image.fromarray(rgb), "rgb.ppm": Image.fromarray(rgb), "gray.pgm": Image.fromarray(gray),
    }
    for name, im in files.items():
        im.save(tmp_path / name)
    s, out = read_all(tmp_path)
    assert sorted(out) == sorted(files) and s.skipped == [] and s.used == len(files) == len(s)
    for name, img in out.items():
        assert img.dtype == np.float32 and img.shape == (40, 56, 3), name
        np.testing.assert_array_equal(img, pil_rgb(tmp_path / name), err_msg=name)


def test_bundled_real_files_equal_pil_convert_rgb(tmp_path):
    """Real-world files shipped with scikit-image: RGBA logo, animated GIF, multi-page TIFF, JPEG."""
    skimage = pytest.importorskip("skimage")
    data = Path(skimage.__file__).parent / "data"
    names = ["astronaut.png", "camera.png", "logo.png", "no_time_for_that_tiny.gif", "multipage.tif",
             "hubble_deep_field.jpg"]
    for n in names:
        shutil.copy(data / n, tmp_path / n)
    _, out = read_all(tmp_path)
    assert sorted(out) == sorted(names)
    for n in names:
        np.testing.assert_array_equal(out[n], pil_rgb(data / n), err_msg=n)


def test_rgba_alpha_is_dropped_not_composited(tmp_path):
    px = np.zeros((4, 4, 4), np.uint8)
    px[...] = (200, 10, 10, 0)  # fully transparent red: compositing on white/black would change it
    Image.fromarray(px, "RGBA").save(tmp_path / "t.png")
    _, out = read_all(tmp_path / "t.png")
    assert set(map(tuple, out["t.png"].reshape(-1, 3))) == {(200.0, 10.0, 10.0)}


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    _, out = read_all(tmp_path / "anim.gif")
    assert out["anim.gif"][0, 0].tolist() == [255.0, 0.0, 0.0]


# --- folders: order, names, what is ignored and what is skipped -----------------------------------

def test_folder_is_recursive_sorted_and_ignores_non_images_silently(tmp_path):
    img = Image.fromarray(smooth(8, 8, 1))
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "__MACOSX").mkdir()
    for rel in ["b.png", "a.png", "sub/c.png", "sub/deeper/d.jpg", ".hidden/e.png", "__MACOSX/f.png"]:
        img.save(tmp_path / rel)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    (tmp_path / "scan_without_extension").write_bytes(buf.getvalue())  # an image by its bytes
    (tmp_path / "notes.txt").write_text("captions")
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    (tmp_path / "data.bin").write_bytes(bytes(200))
    s, out = read_all(tmp_path)
    assert list(out) == ["a.png", "b.png", "scan_without_extension", "sub/c.png", "sub/deeper/d.jpg"]
    assert len(s) == 5 and s.used == 5 and s.skipped == []


def test_symlinked_folders_are_followed_once_and_broken_links_reported(tmp_path):
    data = tmp_path / "data"
    (data / "cats").mkdir(parents=True)
    Image.fromarray(smooth(8, 8, 0)).save(data / "cats" / "c.png")
    (data / "cats_again").symlink_to(data / "cats")  # the same folder twice: read once
    (data / "cats" / "loop").symlink_to(data)  # a link loop must not hang the walk
    (data / "gone.png").symlink_to(tmp_path / "deleted.png")
    s, out = read_all(data)
    assert list(out) == ["cats/c.png"]
    assert [(k.name, k.reason) for k in s.skipped] == [("gone.png", "broken symbolic link")]


def test_unreadable_files_are_skipped_with_reason_or_fail_in_strict_mode(tmp_path):
    Image.fromarray(smooth(32, 32, 2)).save(tmp_path / "good.png")
    Image.fromarray(smooth(32, 32, 3)).save(tmp_path / "zgood.jpg")
    (tmp_path / "bad.png").write_text("this is not a png")
    whole = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    s, out = read_all(tmp_path)
    assert list(out) == ["good.png", "zgood.jpg"] and s.used == 2 and len(s) == 4
    reasons = {k.name: k.reason for k in s.skipped}
    assert set(reasons) == {"bad.png", "cut.png"}
    assert "cannot identify image file" in reasons["bad.png"]
    assert "truncated" in reasons["cut.png"] or "corrupt" in reasons["cut.png"]

    with pytest.raises(InputError) as e:
        list(open_images(tmp_path, strict=True))
    assert "bad.png" in e.value.message and "strict" in e.value.message


def test_iterating_again_gives_the_same_images_and_fresh_skip_list(tmp_path):
    for i in range(3):
        Image.fromarray(smooth(16, 16, i)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    s = open_images(tmp_path)
    first = [(n, a.copy()) for n, a in s]
    second = list(s)
    assert [n for n, _ in first] == [n for n, _ in second] == ["0.png", "1.png", "2.png"]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, second))
    assert len(s.skipped) == 1 and s.used == 3


# --- wide integer and float data: mapped, never saturated ------------------------------------------

def test_16bit_png_uses_the_full_range_where_pil_convert_saturates(tmp_path):
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # 12-bit data, as MRI/CT exports hold
    Image.fromarray(ramp).save(tmp_path / "mri.png")
    assert Image.open(tmp_path / "mri.png").mode.startswith("I")

    naive = pil_rgb(tmp_path / "mri.png")  # what pytorch-fid / clean-fid would see
    assert (naive == 255).mean() > 0.9  # 94% of the slice turns white

    _, out = read_all(tmp_path)
    img = out["mri.png"]
    assert img.min() == 0 and img.max() == 255
    assert (img == 255).mean() == 1 / 4096  # only the brightest pixel
    np.testing.assert_allclose(img[..., 0], ramp * (255 / 4095), atol=1e-4)
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])


def test_16bit_colour_png_keeps_its_low_byte(tmp_path):
    cv2 = pytest.importorskip("cv2")
    ramp = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    rgb = np.dstack([ramp, 4095 - ramp, np.full_like(ramp, 1000)])
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb[..., ::-1])  # OpenCV writes BGR
    assert pil_rgb(tmp_path / "rgb16.png").max() <= 15  # Pillow keeps only the high byte: 16 grey levels

    _, out = read_all(tmp_path)
    img = out["rgb16.png"]
    np.testing.assert_allclose(img, rgb * (255 / 4095), atol=1e-3)  # one min-max over all channels


def test_float_and_wide_tiffs_follow_the_mapping_rule(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    unit = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    Image.fromarray(unit).save(tmp_path / "unit_float.tif")  # mode F, all in [0, 1] -> x255
    Image.fromarray(unit * 10 - 3).save(tmp_path / "hu_float.tif")  # mode F, [-3, 7] -> min-max
    Image.fromarray(np.full((10, 10), 1234, np.uint16)).save(tmp_path / "flat16.tif")  # constant -> 0
    # float RGB: Pillow cannot open it at all
    tifffile.imwrite(tmp_path / "rgb_float.tif", np.dstack([unit, unit / 2, 1 - unit]), photometric="rgb")
    tifffile.imwrite(tmp_path / "rgb16.tif", (np.dstack([unit, unit, unit]) * 4000).astype(np.uint16),
                     photometric="rgb")

    s, out = read_all(tmp_path)
    assert s.skipped == []
    np.testing.assert_allclose(out["unit_float.tif"][..., 0], unit * 255, rtol=1e-6)
    np.testing.assert_allclose(out["hu_float.tif"][..., 0], unit * 255, atol=1e-3)
    assert not out["flat16.tif"].any()
    np.testing.assert_allclose(out["rgb_float.tif"], np.dstack([unit, unit / 2, 1 - unit]) * 255, atol=1e-4)
    stored = (unit * 4000).astype(np.uint16)
    np.testing.assert_allclose(out["rgb16.tif"][..., 0], stored * (255 / stored.max()), atol=1e-3)


# --- DICOM --------------------------------------------------------------------------------------

def _minmax(x):
    x = x.astype(np.float64)
    return (x - x.min()) * 255 / (x.max() - x.min())


def test_dicom_ct_rescaled_then_min_max_to_full_range(tmp_path):
    import pydicom

    path = dicom("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert "WindowCenter" not in ds and "RescaleIntercept" in ds
    _, out = read_all(path)
    img = out["CT_small.dcm"]
    assert img.shape == (128, 128, 3) and img.min() == 0 and img.max() == 255
    np.testing.assert_allclose(img[..., 0], _minmax(ds.pixel_array), atol=1e-3)
    assert np.array_equal(img[..., 0], img[..., 2])


def test_dicom_window_center_width_sets_the_display_range(tmp_path):
    import pydicom

    path = dicom("MR_small.dcm")
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    x = ds.pixel_array.astype(np.float64)
    expected = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255  # DICOM PS3.3 C.11.2.1.2 LINEAR
    _, out = read_all(path)
    np.testing.assert_allclose(out["MR_small.dcm"][..., 1], expected, atol=1e-3)
    assert 0 < (expected == 255).mean() < 1  # the window really clips some pixels: not a min-max


def test_dicom_voi_lut_is_preferred_and_monochrome1_is_inverted(tmp_path):
    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(dicom("MR_small.dcm"))
    lut = Dataset()
    lut.add_new(0x00283002, "US", [1024, 0, 16])  # LUT Descriptor: entries, first stored value, bits
    table = (np.sqrt(np.arange(1024) / 1023) * 65535).astype(np.uint16)  # a gamma curve, clearly not a window
    lut.add_new(0x00283006, "US", table.tolist())  # LUT Data
    ds.VOILUTSequence = [lut]
    ds.save_as(tmp_path / "voi.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "voi_inverted.dcm")

    _, out = read_all(tmp_path)
    x = ds.pixel_array
    expected = table[np.clip(x, 0, 1023)] * (255 / 65535)
    np.testing.assert_allclose(out["voi.dcm"][..., 0], expected, atol=1e-3)
    np.testing.assert_allclose(out["voi_inverted.dcm"], 255 - out["voi.dcm"], atol=1e-4)


def test_dicom_multiframe_gives_one_image_per_frame(tmp_path):
    import pydicom

    path = dicom("rtdose.dcm")
    frames = pydicom.dcmread(path).pixel_array
    s, out = read_all(path)
    assert list(out) == [f"rtdose.dcm#frame{i}" for i in range(1, 16)] and len(s) == 1 and s.used == 15
    for i, name in enumerate(out):
        np.testing.assert_allclose(out[name][..., 0], _minmax(frames[i]), atol=1e-3)  # each frame on its own


def test_dicom_rgb_keeps_8bit_values(tmp_path):
    import pydicom

    for name in ("SC_rgb_rle_2frame.dcm", "examples_rgb_color.dcm"):
        path = dicom(name)
        ref = pydicom.dcmread(path).pixel_array
        ref = ref if ref.ndim == 4 else ref[None]
        _, out = read_all(path)
        assert len(out) == len(ref)
        for got, want in zip(out.values(), ref):
            np.testing.assert_array_equal(got, want.astype(np.float32))


def test_dicom_found_by_its_bytes_without_extension_and_non_images_skipped(tmp_path):
    shutil.copy(dicom("CT_small.dcm"), tmp_path / "IM0001")  # scanners often write no extension
    shutil.copy(dicom("rtplan.dcm"), tmp_path / "plan.dcm")
    s, out = read_all(tmp_path)
    assert list(out) == ["IM0001"] and out["IM0001"].max() == 255
    assert [k.name for k in s.skipped] == ["plan.dcm"] and "no pixel data" in s.skipped[0].reason


def test_a_truncated_dicom_is_named_truncated(tmp_path):
    whole = Path(dicom("CT_small.dcm")).read_bytes()
    (tmp_path / "half.dcm").write_bytes(whole[: len(whole) // 2])  # cut inside the pixel data
    (tmp_path / "head.dcm").write_bytes(whole[:300])  # cut before it
    s, out = read_all(tmp_path)
    reasons = {k.name: k.reason for k in s.skipped}
    assert out == {} and reasons["half.dcm"].startswith("truncated DICOM file: its pixel data is shorter")
    assert reasons["head.dcm"].startswith("DICOM file ends before its pixel data: truncated or damaged (it is a CT "
                                          "Image Storage")


def test_random_bytes_named_dcm_are_not_a_dicom_file_not_a_structured_report(tmp_path):
    shutil.copy(dicom("CT_small.dcm"), tmp_path / "ct.dcm")
    (tmp_path / "noise.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    s, out = read_all(tmp_path)
    assert list(out) == ["ct.dcm"]
    (reason,) = [k.reason for k in s.skipped if k.name == "noise.dcm"]
    assert "not a DICOM file" in reason and "pixel data" not in reason and "structured report" not in reason


def test_dicom_compressed_without_decoder_says_what_to_install(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    decoder = get_decoder(JPEGLSLossless)
    if decoder.is_available:  # the test environment has pylibjpeg (the study's DICOM files need it):
        # pydicom then reports no decoder for this syntax, as on a machine without the plugin
        monkeypatch.setattr(type(decoder), "is_available", property(lambda self: False))
    s, out = read_all(dicom("MR_small_jpeg_ls_lossless.dcm"))
    assert out == {}
    reason = s.skipped[0].reason
    assert s.skipped[0].name == "MR_small_jpeg_ls_lossless.dcm"
    assert "JPEG-LS Lossless" in reason and "pip install pylibjpeg" in reason


# --- archives -----------------------------------------------------------------------------------

def _make_tree(root: Path) -> list[str]:
    names = ["z.png", "a/b.png", "a/c.jpg", "a/scan_no_extension", "m/16bit.png", "m/ct.dcm", "m/n/o.bmp"]
    for i, rel in enumerate(names):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith("ct.dcm"):
            shutil.copy(dicom("CT_small.dcm"), root / rel)
        elif rel.endswith("no_extension"):
            Image.fromarray(smooth(20, 30, i)).save(root / rel, format="PNG")
        elif "16bit" in rel:
            Image.fromarray((np.arange(600, dtype=np.uint16) * 7).reshape(20, 30)).save(root / rel)
        else:
            Image.fromarray(smooth(20, 30, i)).save(root / rel)
    return names


def test_zip_tar_and_targz_read_in_place_give_the_folder_result(tmp_path):
    tree = tmp_path / "tree"
    names = _make_tree(tree)
    _, folder = read_all(tree)
    assert list(folder) == sorted(names)

    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
        for rel in reversed(names):  # archive order differs from name order
            zf.write(tree / rel, rel)
        zf.writestr("readme.txt", "ignored")
    for ext, mode in ((".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz")):
        with tarfile.open(tmp_path / f"set{ext}", mode) as tf:
            tf.add(tree / "a", "./a")  # a directory entry, and './' prefixes, as `tar czf x.tgz .` writes
            for rel in reversed(names):
                if not rel.startswith("a/"):
                    tf.add(tree / rel, rel)

    for archive in ("set.zip", "set.tar", "set.tar.gz", "set.tgz"):
        s, out = read_all(tmp_path / archive)
        assert list(out) == list(folder), archive
        assert s.skipped == [] and len(s) == len(names)
        for n in names:
            np.testing.assert_array_equal(out[n], folder[n], err_msg=f"{archive}:{n}")
    assert not (tmp_path / "a").exists() and not (tmp_path / "z.png").exists()  # nothing extracted


def _png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(smooth(8, 8, seed)).save(buf, format="PNG")
    return buf.getvalue()


def test_unsafe_archive_members_are_listed_and_never_read(tmp_path):
    png = _png_bytes()
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("ok.png", png)
        zf.writestr("../escape.png", png)
        zf.writestr("/etc/abs.png", png)
        zf.writestr("dir/", b"")
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "ok.png")
    s, out = read_all(tmp_path / "evil.zip")
    assert list(out) == ["ok.png"] and len(s) == 1
    reasons = {k.name: k.reason for k in s.skipped}
    assert set(reasons) == {"../escape.png", "/etc/abs.png", "link.png"}  # the directory is not listed
    assert "'..'" in reasons["../escape.png"] and "absolute" in reasons["/etc/abs.png"]
    assert "link" in reasons["link.png"]

    with tarfile.open(tmp_path / "evil.tar", "w") as tf:
        for name, kind in (("ok.png", tarfile.REGTYPE), ("../up.png", tarfile.REGTYPE),
                           ("sym.png", tarfile.SYMTYPE), ("hard.png", tarfile.LNKTYPE), ("fifo.png", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.REGTYPE:
                info.size = len(png)
                tf.addfile(info, io.BytesIO(png))
            else:
                info.linkname = "ok.png"
                tf.addfile(info)
    s, out = read_all(tmp_path / "evil.tar")
    assert list(out) == ["ok.png"]
    reasons = {k.name: k.reason for k in s.skipped}
    assert set(reasons) == {"../up.png", "sym.png", "hard.png", "fifo.png"}
    assert "symbolic link" in reasons["sym.png"] and "hard link" in reasons["hard.png"]
    with pytest.raises(InputError, match="up.png"):
        list(open_images(tmp_path / "evil.tar", strict=True))


def test_archive_limits_on_members_and_member_size(tmp_path):
    png = _png_bytes()
    with zipfile.ZipFile(tmp_path / "many.zip", "w") as zf:
        for i in range(5):
            zf.writestr(f"{i}.png", png)
    with tarfile.open(tmp_path / "many.tar.gz", "w:gz") as tf:
        for i in range(5):
            info = tarfile.TarInfo(f"{i}.png")
            info.size = len(png)
            tf.addfile(info, io.BytesIO(png))
    for archive in ("many.zip", "many.tar.gz"):
        assert len(open_images(tmp_path / archive, max_archive_members=5)) == 5
        with pytest.raises(TooLargeError, match="over the limit of 4|more than 4"):
            open_images(tmp_path / archive, max_archive_members=4)
        with pytest.raises(TooLargeError) as e:
            open_images(tmp_path / archive, max_member_bytes=len(png) - 1)
        assert "0.png" in e.value.message and f"{len(png) - 1:,}" in e.value.message


def test_optional_expanded_size_limit_counts_candidate_members(tmp_path):
    png = _png_bytes()
    with zipfile.ZipFile(tmp_path / "set.zip", "w") as zf:
        for i in range(3):
            zf.writestr(f"{i}.png", png)
        zf.writestr("notes.txt", bytes(10 * len(png)))  # not a candidate: not counted
    with tarfile.open(tmp_path / "set.tar", "w") as tf:
        tf.add(tmp_path / "set.zip", "inner.zip")  # not a candidate either
        for i in range(3):
            info = tarfile.TarInfo(f"{i}.png")
            info.size = len(png)
            tf.addfile(info, io.BytesIO(png))
    for archive in ("set.zip", "set.tar"):
        assert len(open_images(tmp_path / archive, max_expanded_bytes=3 * len(png))) == 3
        with pytest.raises(TooLargeError) as e:
            open_images(tmp_path / archive, max_expanded_bytes=3 * len(png) - 1)
        assert e.value.code == "archive_bomb" and "TRUSTFID_MAX_EXPANDED_BYTES" in e.value.message


def test_zip_member_larger_than_its_header_claims_is_stopped_at_the_limit(tmp_path):
    """A crafted central directory that under-declares a member's size must not let reading run on."""
    payload = bytes(50_000)
    with zipfile.ZipFile(tmp_path / "liar.zip", "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("big.png", payload)
    data = bytearray((tmp_path / "liar.zip").read_bytes())
    cd = data.rfind(b"PK\x01\x02")  # central directory entry: uncompressed size at offset 24
    struct.pack_into("<I", data, cd + 24, 100)
    (tmp_path / "liar.zip").write_bytes(bytes(data))
    s, out = read_all(tmp_path / "liar.zip", max_member_bytes=1000)
    assert out == {} and len(s.skipped) == 1  # zipfile stops at the declared size; the CRC then fails


def test_indexed_gzip_reads_any_offset_in_any_order():
    """The .tar.gz reader seeks backwards through decompressor snapshots instead of restarting."""
    rng = np.random.default_rng(0)
    raw = (rng.integers(0, 16, 3_000_000, dtype=np.uint8) + ord("a")).tobytes()  # compressible, not trivial
    gz = gzip.compress(raw[:1_000_000]) + gzip.compress(raw[1_000_000:])  # two concatenated members
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".gz", delete=False) as f:
        f.write(gz)
    try:
        for index in (GzIndex(spacing=128 * 1024), GzIndex(spacing=16 * 1024, max_points=8)):
            with io.BufferedReader(IndexedGzip(f.name, index)) as r:
                assert r.read() == raw  # first pass builds the index
            assert 4 <= len(index.out_offsets) <= index.max_points  # resume points, not restarts from byte 0
            with io.BufferedReader(IndexedGzip(f.name, index)) as r:
                for start in rng.integers(0, len(raw), 60).tolist()[::-1] + [len(raw) - 3, 0, len(raw) + 5]:
                    r.seek(start)
                    assert r.read(5000) == raw[start:start + 5000], start
        assert index.spacing > 16 * 1024  # the small budget thinned the snapshots
        Path(f.name).write_bytes(gz[:-5000])  # truncated upload
        with pytest.raises(EOFError), io.BufferedReader(IndexedGzip(f.name, GzIndex())) as r:
            r.read()
    finally:
        Path(f.name).unlink()


# --- arrays -------------------------------------------------------------------------------------

def test_npy_layouts_and_names(tmp_path):
    x = np.stack([smooth(12, 10, i) for i in range(3)])  # N, H, W, 3
    np.save(tmp_path / "images.npy", x)
    np.save(tmp_path / "nchw.npy", x.transpose(0, 3, 1, 2))
    np.save(tmp_path / "rgba.npy", np.concatenate([x, np.zeros_like(x[..., :1])], -1))
    np.save(tmp_path / "gray.npy", x[..., 0])
    np.save(tmp_path / "gray1.npy", x[..., :1])

    _, out = read_all(tmp_path / "images.npy")
    assert list(out) == ["images.npy[00000]", "images.npy[00001]", "images.npy[00002]"]
    for i, img in enumerate(out.values()):
        np.testing.assert_array_equal(img, x[i].astype(np.float32))
    for f in ("nchw.npy", "rgba.npy"):
        np.testing.assert_array_equal(np.stack(list(dict(open_images(tmp_path / f)).values())), x.astype(np.float32))
    for f in ("gray.npy", "gray1.npy"):
        got = np.stack(list(dict(open_images(tmp_path / f)).values()))
        np.testing.assert_array_equal(got, np.repeat(x[..., :1], 3, -1).astype(np.float32))


def test_npz_uses_the_images_key_or_its_only_array_and_streams_compressed(tmp_path):
    x = np.stack([smooth(9, 9, i) for i in range(4)])
    np.savez_compressed(tmp_path / "named.npz", labels=np.arange(4), images=x)
    np.savez(tmp_path / "single.npz", faces=x)
    np.savez(tmp_path / "ambiguous.npz", a=x, b=x)
    for f in ("named.npz", "single.npz"):
        s, out = read_all(tmp_path / f)
        assert len(s) == 4 and len(out) == 4
        np.testing.assert_array_equal(np.stack(list(out.values())), x.astype(np.float32))
    assert next(iter(dict(open_images(tmp_path / "named.npz")))) == "named.npz[00000]"
    with pytest.raises(InputError, match="'images'"):
        open_images(tmp_path / "ambiguous.npz")


class _Payload:
    """Unpickling this creates a marker file: proof that pickles are never loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_arrays_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    arr = np.empty(1, dtype=object)
    arr[0] = _Payload(marker)
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    np.savez(tmp_path / "evil.npz", images=arr)
    for f in ("evil.npy", "evil.npz"):
        with pytest.raises(InputError, match="Python objects"):
            list(open_images(tmp_path / f))
    assert not marker.exists()


def test_in_memory_arrays_and_tensors(tmp_path):
    import torch

    x = np.stack([smooth(6, 7, i) for i in range(2)])
    want = x.astype(np.float32)
    from_u8 = dict(open_images(x))
    assert list(from_u8) == ["array[00000]", "array[00001]"]
    np.testing.assert_array_equal(np.stack(list(from_u8.values())), want)
    np.testing.assert_allclose(np.stack(list(dict(open_images(x / 255.0)).values())), want, atol=1e-4)
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    from_tensor = dict(open_images(t))
    assert list(from_tensor)[0] == "tensor[00000]"
    np.testing.assert_allclose(np.stack(list(from_tensor.values())), want, atol=1e-4)

    with pytest.raises(InputError, match=r"\[0, 1\]"):
        open_images(x.astype(np.float32))  # 0..255 floats: a common mistake, not silently min-maxed
    with pytest.raises(InputError, match="uint8"):
        open_images(x.astype(np.int64))
    with pytest.raises(InputError, match=r"array\[None\]"):
        open_images(x[0])  # one HxWxC image, not a batch


def test_torch_is_not_imported_for_numpy_inputs():
    code = ("import sys, numpy as np; from trustfid.inputs import open_images; "
            "list(open_images(np.zeros((2, 8, 8, 3), np.uint8))); assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# --- limits and refusals ------------------------------------------------------------------------

def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header declares w x h pixels (decompression-bomb shaped), with no real data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_pixel_limit_and_decompression_bombs_raise_too_large(tmp_path):
    Image.fromarray(smooth(40, 50, 0)).save(tmp_path / "big.png")
    with pytest.raises(TooLargeError) as e:
        list(open_images(tmp_path, max_pixels=1999))
    assert "big.png" in e.value.message and "1,999" in e.value.message

    (tmp_path / "bomb.png").write_bytes(_png_header_only(10_000, 10_000))  # above Pillow's warning level
    (tmp_path / "big.png").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape as a crash
        with pytest.raises(TooLargeError, match="bomb.png"):
            list(open_images(tmp_path))
    (tmp_path / "bomb.png").write_bytes(_png_header_only(20_000, 20_000))  # above Pillow's hard limit
    with pytest.raises(TooLargeError, match="bomb.png"):
        list(open_images(tmp_path, max_pixels=2**40))

    with pytest.raises(TooLargeError, match="pixels"):
        open_images(np.zeros((1, 50, 50, 3), np.uint8), max_pixels=2000)


def test_image_count_limit_counts_files_and_dicom_frames(tmp_path):
    for i in range(3):
        Image.fromarray(smooth(8, 8, i)).save(tmp_path / f"{i}.png")
    assert len(open_images(tmp_path, max_images=3)) == 3
    with pytest.raises(TooLargeError, match="3 images, over the limit of 2"):
        open_images(tmp_path, max_images=2)
    frames = open_images(dicom("rtdose.dcm"), max_images=10)  # one file, 15 frames
    with pytest.raises(TooLargeError, match="more than 10"):
        list(frames)


def test_unsupported_sources_say_what_is_accepted(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "x.tar").write_bytes(b"BZh91AY&SY" + bytes(100))
    cases = [42, [np.zeros((8, 8, 3))], tmp_path / "missing", tmp_path / "notes.txt"]
    for source in cases:
        with pytest.raises(InputError) as e:
            open_images(source)
        assert "folder" in e.value.message and ".zip" in e.value.message, source
    with pytest.raises(InputError, match="bzip2"):
        open_images(tmp_path / "x.tar")
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match="zip"):
        open_images(tmp_path / "broken.zip")
