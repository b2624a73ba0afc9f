"""The `trustfid` command as a user runs it: exit codes, one-line errors, JSON files."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trustfid.schemas import InspectReport, Report

pytestmark = pytest.mark.engine

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
    # the command knows when its process started: the start-up is in the report's timing
    assert report.timing.startup_s > 0 and report.timing.network_load_s > 0
    assert {k: s.images for k, s in report.timing.sets.items()} == {"real": 24, "generated": 24}
    assert report.counts.real.used == 24 and report.fid > 0
    assert f"{report.fid:.4f}" in p.stdout
    # the headline leads, with its warnings; then KID / FID∞ and the domain check
    lines = p.stdout.splitlines()
    assert lines[0] == report.headline.text
    assert "warning: the sampling interval rests on only 5 resamples" in p.stdout
    assert f"KID {report.kid.value:.5f}" in p.stdout and f"FID∞ {report.fid_infinity.value:.2f}" in p.stdout
    # 24 images a side, subsets of up to 1000: one subset, and no fake "± 0.00000"
    assert report.kid.std is None and "KID" in p.stdout and "±" not in p.stdout.split("KID")[1].split("\n")[0]
    assert "at N = 24 (one subset, the whole of both sets: no spread)" in p.stdout
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
    # the text names the images worth a look, with their scores, and says where every image is
    worst = max(data["images"], key=lambda im: im["domain_score"])
    shakiest = max(data["images"], key=lambda im: im["latent_variance"])
    assert f"most atypical (domain score): {worst['name']} ({worst['domain_score']:.2f})" in p.stdout
    assert f"most uncertain (latent variance): {shakiest['name']}" in p.stdout
    assert f"every image's scores: {out}" in p.stdout


def test_inspect_text_says_how_to_get_every_image():
    p = trustfid("inspect", str(SAMPLES / "real"), "--passes", "2", "--top-k", "3")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("24 images: latent variance")
    atypical = p.stdout.split("most atypical (domain score): ")[1].split("\n")[0]
    assert atypical.count(".png (") == 3
    assert "add --json FILE" in p.stdout


def test_a_folder_of_text_files_as_generated_fails_before_the_real_set_is_read(tmp_path):
    gen = tmp_path / "generated"
    gen.mkdir()
    for name in ("a.txt", "b.txt", "c.txt"):
        (gen / name).write_text("caption")
    # The real set ends in a corrupt PNG, which --strict refuses when it is decoded: an error about the
    # generated set instead proves that the real set was not extracted first.
    real = tmp_path / "real"
    real.mkdir()
    for f in sorted((SAMPLES / "real").iterdir())[:4]:
        (real / f.name).write_bytes(f.read_bytes())
    (real / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    for extra in ([], ["--strict"]):
        p = trustfid("score", str(real), str(gen), *extra)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert "zz_corrupt.png" not in p.stderr and "the generated set has 0 usable images" in p.stderr
        assert "3 files skipped: a.txt, b.txt, c.txt — not images (read are PNG, JPEG" in p.stderr


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


def test_a_misspelt_option_gets_the_commands_usage_and_the_closest_option():
    p = trustfid("score", "samples/real", "samples/generated", "--pases", "3")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "usage: trustfid score" in p.stderr and "unrecognized arguments: --pases 3 (did you mean --passes?)" in p.stderr


def test_submit_of_a_missing_folder_exits_2_with_one_line(tmp_path):
    p = trustfid("submit", str(tmp_path / "missing"), "samples/generated", "--url", "http://127.0.0.1:9")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert "real: '" in p.stderr and "missing' does not exist" in p.stderr


def test_metric_names_ignore_case_and_spaces_and_an_unknown_option_names_the_closest():
    from pydantic import ValidationError

    from trustfid.schemas import ScoreOptions, validation_message

    assert ScoreOptions(metrics=["FID", " Frd "]).metrics == ["fid", "frd"]
    assert ScoreOptions(metrics=["fid", "FRD:Auto"]).frd_mode == "auto"
    with pytest.raises(ValidationError) as e:
        ScoreOptions.model_validate({"pases": 3})
    assert validation_message(e.value) == "pases: not a known field (did you mean 'passes'?)"


# --- saved statistics fix the MC options; help; version; an unreachable service ----------------------

@pytest.fixture(scope="module")
def saved_stats(tmp_path_factory):
    """Statistics of the real samples saved with options other than the defaults."""
    ref = tmp_path_factory.mktemp("stats") / "real_stats.npz"
    p = trustfid("stats", str(SAMPLES / "real"), "-o", str(ref), "--passes", "3", "--seed", "5", "--bootstrap", "0")
    assert p.returncode == 0, p.stderr
    return ref


def test_score_against_saved_statistics_uses_their_mc_options(saved_stats):
    # No --passes/--seed: they come from the file (before: 20 passes, then incompatible_stats after extraction).
    p = trustfid("score", str(saved_stats), str(SAMPLES / "generated"), "--bootstrap", "5", "--json", "-")
    assert p.returncode == 0, p.stderr
    config = json.loads(p.stdout)["config"]
    assert (config["passes"], config["seed"]) == (3, 5)
    # The same option given explicitly and equal is fine; the generated side may be the saved file too.
    p = trustfid("score", str(SAMPLES / "real"), str(saved_stats), "--passes", "3", "--bootstrap", "0", "--json", "-")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["config"]["seed"] == 5


def test_a_conflicting_option_is_refused_before_any_image_is_read(saved_stats, tmp_path):
    # The other side cannot even be read: a refusal that names the option proves nothing was extracted.
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "broken.png").write_bytes(b"not a png")
    p = trustfid("score", str(saved_stats), str(tmp_path / "gen"), "--passes", "20", "--dropout-kind", "element")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "real_stats.npz was computed with passes=3, not 20" in p.stderr
    assert "broken.png" not in p.stderr and "usable image" not in p.stderr


def _all_parsers():
    from app.cli import add_service_commands
    from trustfid.cli import build_parser

    root = build_parser(add_service_commands)
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    return [("trustfid", root), *sub.choices.items()]


def test_inspect_offers_only_the_options_of_one_set():
    parsers = dict(_all_parsers())
    flags = {f for a in parsers["inspect"]._actions for f in a.option_strings}
    assert {"--passes", "--dropout-at", "--window", "--top-k", "--device"} <= flags
    assert not flags & {"--bootstrap", "--kid-subsets", "--metrics", "--prdc-k", "--thumbnails", "--no-copy-check"}
    assert {"--bootstrap", "--kid-subsets", "--metrics"} <= {f for a in parsers["score"]._actions for f in a.option_strings}


def test_every_option_and_argument_explains_itself():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, parser in _all_parsers() for a in parser._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
               and (not a.help or a.help == argparse.SUPPRESS)]
    assert not missing, f"options without help text: {missing}"
    score_help = trustfid("score", "--help").stdout
    for option in ("--dropout-kind", "--mask-mode", "--seed"):
        line = score_help.split(option, 2)[-1].split("\n  --")[0]
        assert len(line.split()) > 4, (option, line)  # the explanation, not just the choices


def test_version():
    from trustfid import __version__

    p = trustfid("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"trustfid {__version__}"


def test_submit_with_no_service_listening_says_so_in_one_line_and_exits_3():
    from app.serve import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    p = trustfid("submit", str(SAMPLES / "real"), str(SAMPLES / "generated"), "--url", url, "--wait")
    assert p.returncode == 3, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert f"cannot reach the trustfid service at {url}" in p.stderr and "trustfid serve" in p.stderr


# --- a fast start: help and argument errors before the engine (torch) is imported -------------------

# Runs a command as `python -m trustfid` (the package's __main__) or as the installed `trustfid` (app.cli),
# then says on its last stdout line which of the engine's heavy libraries were imported.
STARTUP = """
import runpy, sys
entry = sys.argv.pop(1)
try:
    if entry == "trustfid":
        runpy.run_module("trustfid", run_name="__main__", alter_sys=True)
        code = 0
    else:
        from app.cli import main
        code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("imported:", *[m for m in ("torch", "torchvision", "numpy") if m in sys.modules])
sys.exit(code)
"""


@pytest.mark.parametrize("entry", ["trustfid", "app.cli"])
@pytest.mark.parametrize("args,code,says,parser", [
    (["--help"], 0, "usage: trustfid", True),
    (["score", "--help"], 0, "usage: trustfid score", True),
    (["score", "samples/real", "samples/generated", "--pases", "3"], 2, "(did you mean --passes?)", True),
    (["score", "samples/real", "samples/generated", "--passes", "many"], 2, "invalid int value: 'many'", True),
    (["score", "samples/real", "samples/generated", "--dropout-rate", "1.5"], 2, "dropout_rate", False),
    (["score", "/no/such/folder", "samples/generated"], 2, "/no/such/folder", False),
])
def test_help_and_argument_errors_come_before_torch_is_imported(entry, args, code, says, parser):
    p = subprocess.run([sys.executable, "-c", STARTUP, entry, *args], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert p.returncode == code, p.stdout + p.stderr
    imported = p.stdout.splitlines()[-1].split()[1:]
    # the parser's answers (help, its own errors) import none of them; the options' checks and the listing
    # may need numpy, never torch
    assert (imported == []) if parser else ("torch" not in imported), imported
    assert says in (p.stdout if code == 0 else p.stderr) and "Traceback" not in p.stderr
    if not parser:  # the engine's errors: one line (argparse's come with the command's usage)
        assert p.stderr.count("\n") == 1, p.stderr
