"""tests/mutants.py plants its bugs by exact text: each must still find its text once,
or the mutation score silently stops meaning anything. When code moves, update the
mutant's text (or file) in tests/mutants.py; run the script itself by hand."""
import pytest

from tests import mutants


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda m: m.name)
def test_mutant_still_applies(mutant):
    for rel, old, _ in mutant.edits:
        mutants.locate(mutants.ROOT, rel, old)
    missing = [f for f in mutants.TESTS[mutant.area] if not (mutants.ROOT / f).is_file()]
    assert not missing, f"tests/mutants.py names test files that are gone: {missing}"


def test_enough_distinct_mutants():
    names = [m.name for m in mutants.MUTANTS]
    assert len(set(names)) == len(names) >= 15
