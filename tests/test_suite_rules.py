"""The suite's own rules (tests/conftest.py), run on a throw-away suite: a progress line with an estimate, and a
test that starts a process without the slow marker fails naming it."""
from __future__ import annotations

import re

import pytest

from tests.helpers import REPO

pytest_plugins = ["pytester"]

INNER = '''
import subprocess, sys, time
import pytest

def test_unmarked_subprocess():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

@pytest.mark.slow
def test_marked_subprocess():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

@pytest.mark.parametrize("i", range(4))
def test_sleeps(i):
    time.sleep(0.3)
'''


@pytest.mark.slow
def test_progress_lines_and_the_slow_rule(pytester, monkeypatch):
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]\n')
    pytester.makeini("[pytest]\nmarkers = slow: starts processes\n")
    pytester.makepyfile(test_inner=INNER)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("FSVFM_TEST_PROGRESS_S", "0.25")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, failed=1)
    out = result.stdout.str()
    assert ("test_inner.py::test_unmarked_subprocess started 1 process(es) (subprocess [" in out
            and "without @pytest.mark.slow: mark it slow (make test-fast runs -m 'not slow')" in out)
    progress = [line for line in out.splitlines() if line.startswith("[progress]")]
    assert progress and all(re.fullmatch(r"\[progress\] [1-5]/6 tests, 0m0\ds elapsed, about 0m0\ds left", line)
                            for line in progress), progress
    done = [int(line.split()[1].split("/")[0]) for line in progress]
    assert done == sorted(set(done))                    # one line per interval, counts rising
    monkeypatch.setenv("FSVFM_TEST_PROGRESS_S", "0")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider", "-m", "not slow")
    result.assert_outcomes(passed=4, failed=1, deselected=1)
    assert "[progress]" not in result.stdout.str()
