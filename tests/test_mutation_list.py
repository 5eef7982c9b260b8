"""scripts/mutation_check.py cannot rot: every mutation's text is found once in its function, and
every test it names exists."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
mutation_check = sys.modules["mutation_check"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(mutation_check)


def _node_check(source: str, tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("node") is None:
        return
    (tmp_path / "mutated.mjs").write_text(source)
    done = subprocess.run(["node", "--check", str(tmp_path / "mutated.mjs")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("mutation", mutation_check.MUTATIONS, ids=lambda m: m.name)
def test_each_mutation_applies_and_names_real_tests(mutation, tmp_path):
    pristine = (ROOT / mutation.file).read_text()
    mutated = mutation_check.apply(mutation, pristine)     # SystemExit when the text moved
    assert mutated != pristine
    if mutation.file.endswith(".js"):                        # still JavaScript (where node can tell)
        _node_check(mutated, tmp_path)
    else:
        compile(mutated, mutation.file, "exec")              # still Python: the tests see a bug, not a SyntaxError
    for test in mutation.tests:
        file, _, name = test.partition("::")
        assert (ROOT / file).is_file(), test
        if name:
            function = name.split("[")[0]                       # a parametrised case names its function
            assert re.search(rf"^def {re.escape(function)}\(", (ROOT / file).read_text(), re.M), test
