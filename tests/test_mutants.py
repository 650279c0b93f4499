"""The mutation self-test (scripts/mutate.py): planted bugs the suite must catch.

Every registered mutant must still apply to the source (its text occurs exactly as often as it
says), and every cheap one must be caught by its test selection in a temporary copy of the
project. The expensive ones (rebuilds, long selections) run with `python scripts/mutate.py`.
"""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("mutate", ROOT / "scripts" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mutate)

MUTANTS = mutate.load_mutants()
CHEAP = [m for m in MUTANTS if m.cheap]


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_applies(mutant):
    mutate.check_applies(mutant)


@pytest.mark.parametrize("mutant", CHEAP, ids=lambda m: m.name)
def test_cheap_mutant_is_caught(mutant):
    verdict, detail = mutate.run_mutant(mutant)
    assert verdict == "caught", f"{mutant.name} ({mutant.why}): {verdict} {detail}"
