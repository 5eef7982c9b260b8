"""A subset of scripts/mutation_check.py runs in every `make test`: one plausible bug per area is
put into a copy of the code, and the tests named for it must fail (the whole list is a manual run)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT
from test_mutation_list import mutation_check


def test_the_ci_subset_names_real_mutations():
    names = {m.name for m in mutation_check.MUTATIONS}
    assert set(mutation_check.CI_SUBSET) <= names and len(mutation_check.CI_SUBSET) >= 8


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_mutation_of_the_ci_subset_is_caught():
    done = subprocess.run([sys.executable, "scripts/mutation_check.py", "--ci"], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert f"{len(mutation_check.CI_SUBSET)} of {len(mutation_check.CI_SUBSET)} mutations caught" in done.stdout
