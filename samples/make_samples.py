"""How samples/real and samples/generated were made (run once; the PNGs are committed).

real: 24 crops (112x112) of public-domain photos that ship with scikit-image (NASA's astronaut,
rocket and Hubble images; coffee, chelsea, motorcycle).
generated: 24 other crops of the same photos passed through what a weak generator does — blur,
noise and a colour cast — so the FID is clearly above zero.
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from tests.realimages import crops

PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg"]
HERE = Path(__file__).parent


def main():
    rng = np.random.default_rng(0)
    for i, im in enumerate(crops(PHOTOS, 24, size=112, seed=1)):
        (HERE / "real").mkdir(exist_ok=True)
        Image.fromarray(im).save(HERE / "real" / f"real_{i:02d}.png")
    for i, im in enumerate(crops(PHOTOS, 24, size=112, seed=2)):
        blurred = np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.5)), np.float32)
        noisy = blurred * np.array([1.0, 0.9, 1.1]) + rng.normal(0, 8, blurred.shape)
        (HERE / "generated").mkdir(exist_ok=True)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(HERE / "generated" / f"gen_{i:02d}.png")


if __name__ == "__main__":
    main()
