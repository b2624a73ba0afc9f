"""Image factories: small synthetic sets, and real sample photos as the mixed files users have."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_images(folder: Path, n: int, seed: int, size: int = 64, shift: float = 0.0) -> Path:
    """n small RGB PNGs: smooth random blobs (a bit like photos), reproducible from the seed."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        img = np.zeros((size, size, 3))
        for c in range(3):
            fx, fy, ph = rng.uniform(1, 4, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] = 0.5 + 0.4 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph) + shift
        img += rng.normal(0, 0.05, img.shape)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"img_{i:03d}.png")
    return folder


def pngs(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("*.png"))


def mixed_set(src: Path, dest: Path, n: int) -> Path:
    """``n`` of the sample photos as the 8-bit files users have: RGB and gray PNG, RGBA PNG, and JPEG with a
    72-dpi header (which frd-score's SimpleITK read turns into a pixel spacing)."""
    from PIL import Image

    dest.mkdir(parents=True)
    for i, f in enumerate(sorted(src.glob("*.png"))[:n]):
        im = Image.open(f).convert("RGB")
        kind = i % 4
        if kind == 0:
            im.save(dest / f"{i:02d}.png")
        elif kind == 1:
            im.convert("L").save(dest / f"{i:02d}.png")
        elif kind == 2:
            im.putalpha(200)
            im.save(dest / f"{i:02d}.png")
        else:
            im.save(dest / f"{i:02d}.jpg", quality=90, dpi=(72, 72))
    return dest
