"""The test tree has no packages (no __init__.py), so pytest imports each test module by its
basename: two test files of one name in different folders stop the whole suite at collection
(`import file mismatch`). This keeps every basename unique."""
from collections import Counter
from pathlib import Path


def test_every_test_module_has_a_unique_basename():
    tests = Path(__file__).resolve().parent
    names = Counter(p.name for p in tests.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
