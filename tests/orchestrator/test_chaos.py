"""One trial of every fast chaos case: a fault at a random moment, recovery as a user would, an intact store.

The cases live in bench/chaos_trials.py (``bench/chaos.py`` runs ten or more
of each and reports the figures in docs/benchmarks.md). Each trial checks its
own expectations (exit statuses, the one-line messages, the lease released,
no block retried for a full disk...) and then the store against an
uninterrupted run of the same spec: masks and margins bit-exact, the ledger's
checksums equal, ``verify`` clean, no block ledgered twice.
"""

from __future__ import annotations

import random

import pytest
from chaos_trials import FAST_CASES, tmpfs_unavailable


@pytest.mark.slow
@pytest.mark.parametrize("case", FAST_CASES)
def test_chaos_case_ends_with_the_uninterrupted_store(chaos, case: str) -> None:
    if case == "disk_full" and (why := tmpfs_unavailable(chaos.workdir)):
        pytest.skip(f"a full disk needs a real small filesystem, a tmpfs: {why}")
    result = FAST_CASES[case](chaos, random.Random(f"test-{case}"))
    assert result.survived, (result.problems, result.detail)
    assert result.rows_lost == 0 and result.rows_duplicated == 0
