"""The `trustfid` command as a user runs it: exit codes, one-line errors, JSON files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trustfid.schemas import InspectReport, Report

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


def _has_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def trustfid(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)


def test_score_the_samples_writes_the_report(tmp_path):
    out = tmp_path / "r.json"
    p = trustfid("score", str(SAMPLES / "real"), str(SAMPLES / "generated"), "--passes", "2", "--bootstrap", "5",
                 "--json", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("FID ") and "trust:" in p.stdout
    report = Report.model_validate_json(out.read_text())
    assert report.counts.real.used == 24 and report.fid > 0
    assert f"{report.fid:.4f}" in p.stdout
    # the headline leads, with its warnings; then KID / FID∞ and the domain check
    lines = p.stdout.splitlines()
    assert lines[0] == report.headline.text
    assert "warning: the sampling interval rests on only 5 resamples" in p.stdout
    assert f"KID {report.kid.value:.5f}" in p.stdout and f"FID∞ {report.fid_infinity.value:.2f}" in p.stdout
    d = report.domain.generated
    assert f"generated {100 * d.fraction_above:.0f}% ({d.above}/{d.images})" in p.stdout
    assert f"most atypical generated: {d.most_atypical[0].name}" in p.stdout


def test_stats_then_score_against_the_saved_reference(tmp_path):
    ref = tmp_path / "ref.npz"
    p = trustfid("stats", str(SAMPLES / "real"), "-o", str(ref), "--passes", "2")
    assert p.returncode == 0, p.stderr and ref.is_file()
    p = trustfid("score", str(ref), str(SAMPLES / "generated"), "--passes", "2", "--json", "-")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["counts"]["real"]["used"] == 24


def test_inspect_json(tmp_path):
    out = tmp_path / "i.json"
    p = trustfid("inspect", str(SAMPLES / "generated"), "--passes", "2", "--json", str(out))
    assert p.returncode == 0, p.stderr
    data = json.loads(out.read_text())
    assert set(data) >= {"images", "summary"} and len(data["images"]) == 24
    assert set(data["images"][0]) == {"name", "latent_variance", "domain_score"}
    assert all(isinstance(im["domain_score"], float) for im in data["images"])
    InspectReport.model_validate(data)


@pytest.mark.parametrize("args,says", [
    (["score", "/no/such/folder", "samples/generated"], "/no/such/folder"),
    (["score", "samples/real", "samples/generated", "--dropout-at", "Mixed_9z"], "Mixed_9z"),
    (["score", "samples/real", "samples/generated", "--dropout-rate", "1.5"], "dropout_rate"),
    pytest.param(["score", "samples/real", "samples/generated", "--device", "cuda:0"], "cuda",
                 marks=pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU")),
])
def test_bad_input_exits_2_with_one_line(args, says):
    p = trustfid(*args)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and says in p.stderr and "Traceback" not in p.stderr
