"""Real images that ship inside installed packages (no downloads), cut into deterministic sets.

Natural photos: scikit-image's astronaut, coffee, chelsea, rocket, motorcycle and hubble images and
scikit-learn's china/flower. Medical/microscopy: scikit-image's retina, ihc, microaneurysms, cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

NATURAL = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png",
           "hubble_deep_field.jpg", "china.jpg", "flower.jpg"]
MEDICAL = ["retina.jpg", "ihc.png", "microaneurysms.png", "cell.png"]


def _path(name: str) -> Path:
    import skimage
    import sklearn

    for base in (Path(skimage.__file__).parent / "data", Path(sklearn.__file__).parent / "datasets" / "images"):
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(name)


def load(name: str) -> np.ndarray:
    """uint8 HxWx3."""
    return np.asarray(Image.open(_path(name)).convert("RGB"))


def crops(names: list[str], count: int, size: int = 96, seed: int = 0) -> list[np.ndarray]:
    """``count`` crops of ``size``x``size``, cycling over the named images, at seeded positions."""
    rng = np.random.default_rng(seed)
    photos = [load(n) for n in names]
    out = []
    for i in range(count):
        im = photos[i % len(photos)]
        y = int(rng.integers(0, im.shape[0] - size + 1))
        x = int(rng.integers(0, im.shape[1] - size + 1))
        out.append(np.ascontiguousarray(im[y:y + size, x:x + size]))
    return out


def mixed_crops(names: list[str], count: int, sizes: tuple[int, int] = (48, 320), seed: int = 0) -> list[np.ndarray]:
    """``count`` square crops of seeded sizes between ``sizes`` (at most the photo's shorter side),
    cycling over the named images, at seeded positions: a set of mixed resolutions."""
    rng = np.random.default_rng(seed)
    photos = [load(n) for n in names]
    out = []
    for i in range(count):
        im = photos[i % len(photos)]
        size = int(rng.integers(sizes[0], min(sizes[1], *im.shape[:2]) + 1))
        y = int(rng.integers(0, im.shape[0] - size + 1))
        x = int(rng.integers(0, im.shape[1] - size + 1))
        out.append(np.ascontiguousarray(im[y:y + size, x:x + size]))
    return out


def write_folder(folder: Path, images: list[np.ndarray], fmt: str = "png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"img_{i:04d}.{fmt}")
    return folder
