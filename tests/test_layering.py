"""The house's floors: the library (trustfid/) imports nothing from the service, the API never imports
the worker, and a user's own `app/` or `worker/` package cannot shadow ours."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support import ROOT
from tests.support.presets import FAST_OPTIONS


def _imports(package: str) -> dict[str, set[str]]:
    """Top-level module names each file of ``package`` imports (absolute imports only)."""
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = names
    return out


def test_the_library_imports_nothing_from_the_service():
    service = {"app", "worker", "fastapi", "starlette", "uvicorn", "celery", "kombu", "redis"}
    bad = {f: sorted(n & service) for f, n in _imports("trustfid").items() if n & service}
    assert not bad, f"trustfid/ must stand on its own, but imports {bad}"


def test_the_api_never_imports_the_worker():
    bad = [f for f, n in _imports("app").items() if "worker" in n]
    assert not bad, f"app/ and worker/ depend one way (worker -> app); these files import worker: {bad}"


def _shadowed_dir(tmp_path: Path) -> Path:
    """A user's project with its own app/ and worker/ packages, as in every FastAPI repository."""
    for pkg in ("app", "worker"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("MINE = True\n")
        (tmp_path / pkg / "client.py").write_text("raise ImportError('the user app, not trustfid')\n")
    return tmp_path


def test_importing_trustfid_works_beside_a_users_app_package(tmp_path):
    cwd = _shadowed_dir(tmp_path)
    code = textwrap.dedent("""
        import sys, app
        assert app.MINE
        from trustfid import Client, ScoreOptions, Report, __version__
        assert 'torch' not in sys.modules, 'Client must not load torch'
        from trustfid import score, compute_stats, inspect, load_stats
        print(__version__, score.__module__)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trustfid.pipeline" in r.stdout


def test_the_client_scores_from_a_directory_with_its_own_app_package(stack, image_sets, tmp_path):
    cwd = _shadowed_dir(tmp_path)
    code = textwrap.dedent(f"""
        import app, json
        assert app.MINE
        from trustfid import Client
        with Client({stack.url!r}, api_key="test-key-alice") as c:
            rep = c.submit({str(image_sets['real'])!r}, {str(image_sets['generated'])!r},
                           {FAST_OPTIONS!r}, wait=True).wait(timeout=300).report()
        print(json.dumps({{"fid": rep.fid, "used": rep.counts.generated.used}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    out = __import__("json").loads(r.stdout.strip().splitlines()[-1])
    assert out["used"] == 4 and out["fid"] > 0
