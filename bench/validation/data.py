"""The study's images: real photos and medical images that ship inside installed packages, cut into
deterministic crops, and ImageNet-C-style corruptions at five severities. Nothing is downloaded.

Every crop is a square window of a source image (side drawn uniformly between ``MIN_WINDOW`` of the
image's short side and the whole short side, position uniform), resized with PIL's antialiased
bicubic to ``CROP`` x ``CROP`` pixels (224, the resolution ImageNet-C corrupts at) and kept as uint8
RGB. The engine then resizes every image to 299 x 299 ("clean" mode), as it does for a user's images.
Windows come from ``numpy.random.default_rng(seed)`` with a seed per (set, source), so the same
command always builds the same images.

Corruptions follow Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019), imagenet_c/corruptions.py, with its severity constants
for 224-px images. The noise of ``gaussian_noise`` is seeded per (family, severity, image).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

CROP = 224
MIN_WINDOW = 0.5

# Natural RGB photos (scikit-image, scikit-learn). hubble_deep_field is left out: an astronomical
# image is not what ImageNet photos look like; motorcycle_right is a near copy of motorcycle_left.
NATURAL_RGB = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
               "china.jpg", "flower.jpg"]
# Natural grayscale photos: in the natural class of the natural-vs-medical test so that "medical"
# cannot be told apart just by missing colour (most CT/MR images are grayscale).
NATURAL_GRAY = ["camera.png", "coins.png", "moon.png", "gravel.png"]
# Medical and biomedical images: scikit-image's fundus photo, immunohistochemistry stain, fundus
# angiography crop and microscopy cell; pydicom's CT, MR, nuclear-medicine and ultrasound test files
# (only files present in the pydicom wheel; synthetic test patterns and segmentation masks left out).
MEDICAL_SKIMAGE = ["retina.jpg", "ihc.png", "microaneurysms.png", "cell.png"]
MEDICAL_DICOM = {
    "693_J2KI.dcm": "CT head",
    "CT_small.dcm": "CT spine",
    "JPEG2000.dcm": "NM whole-body bone scan",
    "MR_small.dcm": "MR",
    "examples_overlay.dcm": "MR abdomen",
    "examples_jpeg2k.dcm": "US doppler",
    "examples_palette.dcm": "US",
    "examples_ybr_color.dcm": "US echocardiogram",
}

FAMILIES: dict[str, list] = {
    # name: the five severity constants of imagenet_c
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
    "gaussian_blur": [1, 2, 3, 4, 6],
    "jpeg": [25, 18, 15, 10, 7],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
}
SEVERITIES = [1, 2, 3, 4, 5]


@dataclass
class ImageSet:
    name: str
    images: list[np.ndarray]  # uint8 HxWx3
    sources: list[str]  # the source image of each crop

    def __len__(self) -> int:
        return len(self.images)


# --- sources -----------------------------------------------------------------------------------

def _package_image(name: str) -> np.ndarray:
    import skimage
    import sklearn

    for base in (Path(skimage.__file__).parent / "data", Path(sklearn.__file__).parent / "datasets" / "images"):
        if (base / name).is_file():
            return _rgb(np.asarray(Image.open(base / name)))
    raise FileNotFoundError(f"{name} is not among the images bundled with scikit-image/scikit-learn")


def _rgb(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def _dicom_frames(name: str) -> list[np.ndarray]:
    """The frames of a pydicom test file, decoded by the engine's own DICOM reader (VOI LUT/window,
    MONOCHROME1 inversion), as uint8 RGB. Missing decoders: the file is skipped (empty list)."""
    from pydicom.data import get_testdata_file

    from trustfid.inputs import open_images

    path = get_testdata_file(name, download=False) if _accepts_download_kw() else get_testdata_file(name)
    if path is None:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = [im for _, im in open_images(path)]
    return [_rgb(np.clip(np.rint(f), 0, 255).astype(np.uint8)) for f in frames]


def _accepts_download_kw() -> bool:
    import inspect

    from pydicom.data import get_testdata_file

    return "download" in inspect.signature(get_testdata_file).parameters


# --- crops -------------------------------------------------------------------------------------

def _crop(im: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = im.shape[:2]
    short = min(h, w)
    side = int(round(rng.uniform(MIN_WINDOW, 1.0) * short))
    side = max(1, min(side, short))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    window = Image.fromarray(im[y:y + side, x:x + side])
    return np.asarray(window.resize((CROP, CROP), resample=Image.BICUBIC))


def crop_set(name: str, sources: dict[str, list[np.ndarray]], per_source: int, seed: int) -> ImageSet:
    """``per_source`` crops of every source (frames of a multi-frame source taken in turn)."""
    images, names = [], []
    for k, (src, frames) in enumerate(sources.items()):
        rng = np.random.default_rng([seed, k])
        for i in range(per_source):
            frame = frames[(i * max(1, len(frames) // per_source)) % len(frames)]
            images.append(_crop(frame, rng))
            names.append(src)
    return ImageSet(name, images, names)


def natural_rgb_sources() -> dict[str, list[np.ndarray]]:
    return {n: [_package_image(n)] for n in NATURAL_RGB}


def natural_gray_sources() -> dict[str, list[np.ndarray]]:
    return {n: [_package_image(n)] for n in NATURAL_GRAY}


def medical_sources() -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """(sources, notes): notes name any DICOM file that could not be decoded here."""
    out = {n: [_package_image(n)] for n in MEDICAL_SKIMAGE}
    notes = []
    for name, what in MEDICAL_DICOM.items():
        try:
            frames = _dicom_frames(name)
        except Exception as e:  # a decoder plugin missing on this machine
            frames, why = [], str(e)
        else:
            why = "no frame decoded"
        if frames:
            out[f"{name} ({what})"] = frames
        else:
            notes.append(f"{name} skipped: {why}")
    return out, notes


# --- corruptions (imagenet_c) ------------------------------------------------------------------

def corrupt(image: np.ndarray, family: str, severity: int, key: tuple[int, ...]) -> np.ndarray:
    """One image (uint8 HxWx3) corrupted at severity 1..5; 0 returns it unchanged."""
    if severity == 0:
        return image
    c = FAMILIES[family][severity - 1]
    x = image.astype(np.float64) / 255.0
    if family == "gaussian_noise":
        rng = np.random.default_rng([0x601, severity, *key])
        x = np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1)
    elif family == "gaussian_blur":
        # imagenet_c: skimage.filters.gaussian(x, sigma=c, channel_axis=-1) (mode 'nearest', truncate 4)
        x = np.clip(ndimage.gaussian_filter(x, sigma=(c, c, 0), mode="nearest", truncate=4.0), 0, 1)
    elif family == "contrast":
        means = x.mean(axis=(0, 1), keepdims=True)
        x = np.clip((x - means) * c + means, 0, 1)
    elif family == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=c)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    elif family == "pixelate":
        im = Image.fromarray(image)
        h, w = image.shape[:2]
        small = im.resize((int(w * c), int(h * c)), Image.BOX)
        return np.asarray(small.resize((w, h), Image.BOX))
    else:
        raise KeyError(family)
    return np.rint(x * 255).astype(np.uint8)


def corrupted_set(base: ImageSet, family: str, severity: int) -> ImageSet:
    fam = list(FAMILIES).index(family)
    images = [corrupt(im, family, severity, (fam, i)) for i, im in enumerate(base.images)]
    return ImageSet(f"{family}/{severity}", images, list(base.sources))


@dataclass
class StudyData:
    reference: ImageSet  # clean natural crops: the "real" side of every FID
    test: ImageSet  # other clean natural crops of the same photos: corrupted at each severity
    gray: ImageSet  # natural grayscale photos (natural class of the natural-vs-medical test)
    medical: ImageSet
    notes: list[str]


def build(per_source_reference: int, per_source_test: int, per_source_gray: int,
          per_source_medical: int) -> StudyData:
    rgb = natural_rgb_sources()
    med, notes = medical_sources()
    return StudyData(
        reference=crop_set("reference", rgb, per_source_reference, seed=1),
        test=crop_set("test", rgb, per_source_test, seed=2),
        gray=crop_set("natural_gray", natural_gray_sources(), per_source_gray, seed=3),
        medical=crop_set("medical", med, per_source_medical, seed=4),
        notes=notes,
    )
