"""A small run of benchmarks/serve_load.py: concurrent clients, every result equal to enhance_file's."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def _load():
    path = Path(__file__).parents[1] / "benchmarks" / "serve_load.py"
    spec = importlib.util.spec_from_file_location("serve_load", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ten_concurrent_clients(tmp_path):
    r = _load().run(clients=10, tasks=1, jobs=1, size=32, max_seconds=90, workdir=tmp_path)
    assert r["errors"] == [] and r["mismatches"] == 0 and r["tasks_done"] == 10
    assert r["submit_ms"]["max"] > 0 and r["server_rss_mib"]["peak"] > 0


@pytest.mark.slow
def test_fifty_concurrent_clients(tmp_path):
    r = _load().run(clients=50, tasks=2, jobs=2, size=32, max_seconds=120, workdir=tmp_path)
    assert r["errors"] == [] and r["mismatches"] == 0 and r["tasks_done"] == 100
