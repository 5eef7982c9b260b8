"""The service's OpenAPI schema tells the truth about the model it serves: schemathesis, with all
its checks, against a NIC run and an attention run on 127.0.0.1. Positive data (pictures made by
tests/schemathesis_hooks.py, which also states the two rules across fields no schema can) must be
accepted, schema-violating data refused, every response documented. The coverage phase's boundary
values bypass the hooks, so there positive acceptance is left out (it would send n_best above the
beam, which the schema can only say in words); the examples and fuzzing phases run every check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import Server

HERE = Path(__file__).resolve().parent
MAX_IMAGES = 4


def _schemathesis() -> str:
    found = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(found).exists():
        pytest.skip("schemathesis is not installed")
    return found


def _run(url: str, default_beam: int, phases: str, *more: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks", "PYTHONPATH": str(HERE),
           "SHOWTELL_DEFAULT_BEAM": str(default_beam), "SHOWTELL_MAX_IMAGES": str(MAX_IMAGES)}
    return subprocess.run([_schemathesis(), "--config-file", str(HERE / "schemathesis.toml"), "run",
                           url + "/openapi.json", "--checks", "all", *more, "--phases", phases, "--max-examples", "20",
                           "--seed", "1", "--no-color", "--request-timeout", "60"],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", ["nic", "attention"])
def test_schemathesis_with_every_check_finds_nothing(kind, request):
    run = request.getfixturevalue("trained_run" if kind == "nic" else "attention_run")
    server = Server(run, "--max-images", str(MAX_IMAGES))
    try:
        schema = httpx.get(server.url + "/openapi.json").json()
        offered = [p["name"] for p in schema["paths"]["/v1/captions"]["post"]["parameters"]]
        assert ("attention" in offered) == (kind == "attention"), offered   # only a model that attends offers maps
        beam = httpx.get(server.url + "/healthz").json()["model"]["beam_size"]
        for phases, more in (("examples,fuzzing", ()), ("coverage", ("--exclude-checks", "positive_data_acceptance"))):
            done = _run(server.url, beam, phases, *more)
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
            assert " passed" in done.stdout and "failures" not in done.stdout.split("SUMMARY")[-1]
    finally:
        assert "Traceback" not in server.stop()
