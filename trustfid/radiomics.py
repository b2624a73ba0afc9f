"""Radiomic features of one image for the Fréchet Radiomics Distance (frd.py), exactly as frd-score
v1 computes them (``frd_score.frd.process_image_mask_pair``): pyradiomics with frd-score's published
2-D extraction YAML (Original, LoG sigma 2-5 and Wavelet images; first-order, GLCM, GLRLM, GLSZM and
NGTDM features; normalisation scale 100, 2 x 2 B-spline resampling, bin width 5, voxel shift 300).
We never compute a radiomic feature ourselves: every number below comes from pyradiomics.

What pyradiomics is given, as frd-score gives it:

* the image as float32 intensities. frd-score reads a file with SimpleITK as float32: an RGB(A) file
  becomes ITK's luminance (2125 R + 7154 G + 721 B) / 10000 computed in double, a gray file its
  values. We compute the same from the decoded image (``gray``): for 8-bit files that is the image
  the FID sees; for data wider than 8 bits (16-bit, float, DICOM) it is the *stored* intensities
  (DICOM: after the modality LUT, e.g. Hounsfield units), never the 8-bit display mapping the FID
  network gets (docs/IMAGES.md);
* a 2-D image as a (1, H, W) volume with spacing (1, 1, 1), and a mask of ones except the corner
  pixel (a pyradiomics workaround frd-score applies);
* the features kept as frd-score v1 keeps them: every non-diagnostic output, plus the diagnostics
  that are numbers (image and mask means, voxel counts...), in pyradiomics' order.

An image's radiomics have a time budget (``features``' ``seconds``: EngineSettings.max_frd_seconds):
past it ``OverBudget`` is raised, and the image is left out of the FRD (decode_worker.prepare). A call
into pyradiomics' C code cannot be interrupted, nor a thread stopped from outside (no signal: the
radiomics run in decode processes and in a prefetch thread), so the budget is checked between
pyradiomics' steps: before and after each image type's features, five feature classes each (with
frd-score's YAML a 2-D image has five image types: the original and four wavelet decompositions;
pyradiomics' LoG needs 4 voxels in every dimension of the (1, H, W) volume). The last check comes at the
end: an image is left out when its radiomics took longer than the budget, and the work goes on past the
budget for at most one step: loading the image (normalisation, resampling) or one image type's filter
and features. An image's radiomics are timed from the start of ``features``, reading its file included.
Measured on 2 cores: at most 0.35 s past the budget for a 1024 x 1024 image (1.9 s in all), 1.1 s at
2048 x 2048 (7.4 s in all). An image within the budget gets the same pyradiomics calls on the same
inputs: the same features, to the last bit.

pyradiomics is an optional dependency (the ``medical`` extra; scripts/setup.sh builds it from
source): ``require()`` raises a clear InputError when it is missing.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import tempfile
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import InputError
from .inputs.intensity import EncodedImage

VERSION = "v1"  # frd-score's FRD version reproduced here
LOG_SIGMA = [2.0, 3.0, 4.0, 5.0]  # frd-score v1 re-applies its default LoG sigmas over the YAML's
INSTALL_HINT = ("FRD needs pyradiomics, SimpleITK and frd-score's configuration: install trustfid's `medical` "
                "extra (scripts/setup.sh engine,embedded,medical builds pyradiomics from source)")


class RadiomicsUnavailable(InputError):
    code = "frd_unavailable"


class OverBudget(Exception):
    """An image's radiomics ran past their time budget (``features``' ``seconds``)."""

    def __init__(self, seconds: float):
        super().__init__(f"the radiomics of this image took over {seconds:g} s")
        self.seconds = seconds


def missing() -> str | None:
    """Why FRD cannot run here (a missing package), or None when it can. pyradiomics and SimpleITK are
    imported (a broken build shows here); frd-score is only located: we read its YAML, never its code
    (importing it takes seconds: it loads OpenCV, SciPy and plotting libraries)."""
    for module in ("radiomics", "SimpleITK"):
        try:
            __import__(module)
        except Exception as e:  # ImportError, or a broken build failing at import
            return f"{module} cannot be imported ({type(e).__name__}: {e})"
    path = config_path()
    return None if path is not None and path.is_file() else "frd-score's extraction_2d.yaml was not found"


def require() -> None:
    why = missing()
    if why:
        raise RadiomicsUnavailable(f"{INSTALL_HINT}; {why}")


def config_path() -> Path | None:
    """frd-score's published v1 2-D extraction YAML, where the frd-score package is installed."""
    spec = importlib.util.find_spec("frd_score")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "configs" / "extraction_2d.yaml"


@lru_cache
def provenance(reading: str = "frd-score") -> dict:
    """What makes two sets' radiomic statistics comparable: the FRD version, the extraction YAML (by
    its sha256), the pyradiomics release that ran it and what it read (ScoreOptions.frd_reading)."""
    require()
    return {"frd_version": VERSION, "config_sha256": hashlib.sha256(config_path().read_bytes()).hexdigest(),
            "pyradiomics": metadata.version("pyradiomics"), "reading": reading}


@lru_cache
def _extractor():
    """The configured extractor, shared by every call in this process (``execute`` only reads it)."""
    from radiomics import featureextractor

    class BudgetedExtractor(featureextractor.RadiomicsFeatureExtractor):
        """pyradiomics' extractor, checking a deadline (``time.monotonic``; None: none) before and after
        each image type's features. A copy per call carries its own deadline: no state is shared between
        threads."""

        deadline: float | None = None
        seconds: float = 0.0

        def computeFeatures(self, image, mask, imageTypeName, **kwargs):
            self.check()
            out = super().computeFeatures(image, mask, imageTypeName, **kwargs)
            self.check()
            return out

        def check(self) -> None:
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise OverBudget(self.seconds)

    logging.getLogger("radiomics").setLevel(logging.ERROR)  # it logs every filter at INFO
    ex = BudgetedExtractor(str(config_path()))
    if "LoG" in ex.enabledImagetypes:
        ex.enableImageTypeByName("LoG", customArgs={"sigma": list(LOG_SIGMA)})
    return ex


def _budgeted(seconds: float | None, start: float):
    """The extractor for one image whose radiomics began at ``start`` and may take ``seconds`` (None: no limit)."""
    ex = copy.copy(_extractor())
    if seconds is not None:
        ex.deadline, ex.seconds = start + seconds, seconds
    return ex


def gray(image: np.ndarray) -> np.ndarray:
    """The 2-D float32 intensities frd-score's SimpleITK read gives for this image: a 2-D array as it is;
    colour (H, W, 3+) as ITK's luminance, computed in double as ITK does; (H, W, 1) as its channel."""
    image = np.asarray(image)
    if image.ndim == 2:
        return image.astype(np.float32, copy=False)
    if image.shape[2] == 1:
        return image[..., 0].astype(np.float32, copy=False)
    rgb = image[..., :3].astype(np.float64)
    return ((2125.0 * rgb[..., 0] + 7154.0 * rgb[..., 1] + 721.0 * rgb[..., 2]) / 10000.0).astype(np.float32)


def read_as_frd_score(encoded: EncodedImage) -> tuple[np.ndarray, tuple[float, float]]:
    """(2-D float32 intensities, pixel spacing) of an image file as frd-score reads it: SimpleITK's
    ``ReadImage(path, sitkFloat32)``, which picks its reader by the file name's extension."""
    import SimpleITK as sitk

    if isinstance(encoded.data, str):
        image = sitk.ReadImage(encoded.data, outputPixelType=sitk.sitkFloat32)
    else:
        suffix = Path(encoded.name).suffix.lower() or ".img"
        with tempfile.NamedTemporaryFile(suffix=suffix) as f:
            f.write(encoded.data)
            f.flush()
            image = sitk.ReadImage(f.name, outputPixelType=sitk.sitkFloat32)
    if image.GetDimension() != 2:
        raise ValueError(f"SimpleITK read a {image.GetDimension()}-D image")
    return sitk.GetArrayFromImage(image), tuple(image.GetSpacing())


def features(image: np.ndarray | EncodedImage, seconds: float | None = None) -> tuple[list[str], np.ndarray]:
    """(names, float64 values) of one image's radiomic features, in pyradiomics' order. ``image``: the
    decoded or stored intensities (pixel spacing 1), or an encoded file read as frd-score reads it.
    ``seconds``: the time budget from here, reading the file included (None: none); raises OverBudget past
    it, at the next step boundary (module docstring)."""
    import SimpleITK as sitk

    start = time.monotonic()
    if isinstance(image, EncodedImage):
        arr, (sx, sy) = read_as_frd_score(image)
        arr = arr[np.newaxis]
    else:
        arr, (sx, sy) = gray(image)[np.newaxis], (1.0, 1.0)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((sx, sy, 1.0))
    mask = np.ones(arr.shape, np.uint8)
    mask[0, 0, 0] = 0
    msk = sitk.GetImageFromArray(mask)
    msk.SetSpacing((sx, sy, 1.0))
    out = _budgeted(seconds, start).execute(img, msk)
    names, values = [], []
    for name, value in out.items():
        if "diagnostics" not in name:
            names.append(name.replace("original_", ""))
            values.append(float(value))
            continue
        try:
            values.append(float(value))
        except (TypeError, ValueError):
            continue  # string and tuple diagnostics
        names.append(name)
    return names, np.asarray(values, np.float64)
