"""Which sources the domain model never sees: the held-out split, fixed before any model was fitted.

The rule (written down and committed before the first fit on these sources; docs/VALIDATION.md):
within each stratum — the three natural kinds (colour, grayscale, texture photos) and each medical
modality (CT, MR, CR, US, NM, fundus, histology, microscopy) — order the sources by the SHA-256 of
their name and hold out the first round(n / 3). Whole sources are held out, never single crops, so no
crop of a held-out photo or scan is ever fitted on; a stratum of one source (NM) stays in training.
The hash makes the choice mechanical: nobody picked easy or hard cases.

``HELDOUT`` is the list the rule gives for sources.SOURCES; a test (tests/test_trust.py) checks that the
rule still gives it, so the split cannot drift silently when sources are added.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from .sources import SOURCES, Source

FRACTION = 1 / 3


def _key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def heldout_by_rule(sources: tuple[Source, ...] = SOURCES) -> list[str]:
    strata: dict[str, list[str]] = defaultdict(list)
    for s in sources:
        strata[s.group].append(s.name)
    out = []
    for names in strata.values():
        out += sorted(names, key=_key)[:round(len(names) * FRACTION)]
    return sorted(out)


HELDOUT: tuple[str, ...] = (
    'dipy:aniso_vox.nii.gz',  # MR
    'imagecorruptions:frost1.png',  # texture
    'imagecorruptions:frost6.jpg',  # texture
    'insightface:t1.jpg',  # natural-colour
    'nibabel:anatomical.nii',  # MR
    'pydicom-data:OT-PAL-8-face.dcm',  # natural-colour
    'pydicom-data:RG3_UNCR.dcm',  # CR
    'pydicom-data:US1_UNCR.dcm',  # US
    'pydicom-data:bad_sequence.dcm',  # CT
    'pydicom-data:emri_small.dcm',  # MR
    'pydicom:CT_small.dcm',  # CT
    'pydicom:examples_ybr_color.dcm',  # US
    'skimage:astronaut.png',  # natural-colour
    'skimage:chelsea.png',  # natural-colour
    'skimage:clock_motion.png',  # natural-gray
    'skimage:coins.png',  # natural-gray
    'skimage:gravel.png',  # texture
    'skimage:lfw_subset.npy (faces)',  # natural-gray
    'skimage:retina.jpg',  # fundus
    'skimage:rocket.jpg',  # natural-colour
    'sklearn:china.jpg',  # natural-colour
    'sklearn:flower.jpg',  # natural-colour
    'stardist:img2d.tif',  # microscopy
    'tiatoolbox:target_image.png',  # histology
)


def is_heldout(name: str) -> bool:
    return name in HELDOUT
