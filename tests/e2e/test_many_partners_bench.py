"""The many-partners benchmark, run by CI with 100 partners in both storage layouts.

It must finish with every `success` stored once and no non-2xx answer, directly and
through PgBouncer; its throughput figures are printed (and quoted in docs/performance.md
from longer runs), never asserted: timings vary with the machine.
"""

import subprocess
import sys

import pytest

from tests.e2e.server import PROJECT_DIR

pytestmark = pytest.mark.direct_postgres  # it starts its own PgBouncer


def test_100_partners_in_both_layouts_store_every_success_and_answer_only_2xx():
    run = subprocess.run(
        [
            sys.executable,
            "bench/many_partners_bench.py",
            "--partners",
            "100",
            "--duration",
            "6",
            "--rounds",
            "1",
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(run.stdout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count(": OK;") == 2  # stored originals == success answers, in each layout
