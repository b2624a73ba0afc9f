"""A real PACS for the tests: Debian's Orthanc with its DICOMweb plugin (packages orthanc and
orthanc-dicomweb, which scripts/test.sh installs), started on a free loopback port from a JSON
configuration of our own (its own storage folder, no DICOM port, HTTP basic sign-in), so a daemon the
package may have started on its default ports is never the one a test talks to. DICOM files go in
through Orthanc's REST API (POST /instances); trustfid reads them back over DICOMweb.

Test data: CT_small.dcm from pydicom's bundled test files (16-bit signed CT with a modality rescale),
varied per instance, written as series of single-frame and multi-frame instances, and a Basic Text SR.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.serve import free_port, stop_process

USER = "trustfid-qa"
PASSWORD = "pacs-pw-7Hq2x9Lk"  # the tests look for it everywhere it must not be
PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR Storage


def binaries() -> tuple[str, Path]:
    """Orthanc and its DICOMweb plugin, or a skip that says how to install them."""
    orthanc = shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
                                               if Path(p).is_file()), None)
    plugin = next((p for d in PLUGIN_DIRS if d.is_dir() for p in sorted(d.glob("libOrthancDicomWeb.so*"))), None)
    if orthanc is None or plugin is None:
        pytest.skip("Orthanc with its DICOMweb plugin is not installed (Debian: apt-get install orthanc "
                    "orthanc-dicomweb; scripts/test.sh installs them as root)")
    return orthanc, plugin


class Orthanc:
    def __init__(self, folder: Path):
        binary, plugin = binaries()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        config = {
            "Name": "trustfid-tests", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "Plugins": [str(plugin)], "HttpPort": self.port, "RemoteAccessAllowed": False,
            "DicomServerEnabled": False,  # no DICOM port: nothing to clash with a packaged daemon's 4242
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = folder / "orthanc.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    if httpx.get(self.url + "/system", auth=(USER, PASSWORD), timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
                assert time.monotonic() < deadline, "Orthanc did not start:\n" + self.log.read_text(errors="replace")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def store(self, datasets) -> None:
        """Each pydicom dataset through Orthanc's REST API, as a DICOM file."""
        for ds in datasets:
            buf = io.BytesIO()
            ds.save_as(buf)
            r = httpx.post(self.url + "/instances", content=buf.getvalue(), auth=(USER, PASSWORD), timeout=30)
            assert r.status_code == 200 and r.json()["Status"] == "Success", r.text

    def stop(self) -> None:
        stop_process(self.proc, 10)


def uid(*parts) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["trustfid-tests", *map(str, parts)])  # the same UIDs every run


def ct_series(study: str, series: str, seed: int, singles: int, frames: int = 0, blur: bool = False) -> list:
    """``singles`` single-frame CT instances and, with ``frames``, one multi-frame instance of that many
    frames: CT_small's 16-bit stored values moved by a seeded offset and noise (blurred first with ``blur``),
    so each image differs and the modality rescale still applies."""
    import pydicom
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    dtype = src.pixel_array.dtype
    base = src.pixel_array.astype(np.float64)
    if blur:
        pad = np.pad(base, 1, mode="edge")
        base = sum(pad[i:i + base.shape[0], j:j + base.shape[1]] for i in range(3) for j in range(3)) / 9
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)

    def frame() -> np.ndarray:
        img = base + rng.integers(-60, 60) + rng.normal(0, 25, base.shape)
        return np.clip(np.rint(img), info.min, info.max).astype(dtype)

    out = []
    for i in range(singles + (1 if frames else 0)):
        ds = copy.deepcopy(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(series, i)
        ds.InstanceNumber = i + 1
        if i < singles:
            ds.PixelData = frame().tobytes()
        else:
            ds.NumberOfFrames = frames
            ds.PixelData = b"".join(frame().tobytes() for _ in range(frames))
        out.append(ds)
    return out


def sr_series(study: str, series: str) -> list:
    """One Basic Text SR: an instance without pixel data."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    for tag in [t for t in ds.keys() if t.group in (0x0028, 0x7FE0)]:
        del ds[tag]
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SR_CLASS
    ds.Modality = "SR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(series, "sr")
    return [ds]


def as_folder(datasets, folder: Path) -> Path:
    """The same instances as files, named as trustfid names what it retrieves (SERIES_UID/SOP_UID.dcm), so
    that a folder and the PACS give the images in one order."""
    for ds in datasets:
        (folder / ds.SeriesInstanceUID).mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm")
    return folder
