"""Prepared folders are the same on today's stack as on the numpy 1 / pandas 2 stack they were first made on.

tests/data/prepared_digests.json holds the content digests (tests/prepared_digest.py) of the shared data
sets prepared by beeray before the move to numpy 2, pandas 3 and current pyarrow: same items and users in
the same order, the same interactions, the same cold items of every split, the same stats and split.json
(and so the same fingerprint: old folders keep working).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import SHARED_DATA, needs_shared
from tests.prepared_digest import digest

RECORDED = json.loads((Path(__file__).parent / "data" / "prepared_digests.json").read_text())["folders"]
CASES = {"movielens": ("movielens", "ml-latest-small", []), "goodbooks": ("goodbooks", "goodbooks", []),
         "amazon": ("amazon-json", "amazon-scientific", []),
         "amazon-time": ("amazon-json", "amazon-scientific", ["--split", "time"])}
SIZES = {"movielens": (659, 6169, 51535), "goodbooks": (2669, 9891, 203561), "amazon": (8317, 4344, 58492)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_prepared_folder_unchanged(name, tmp_path):
    kind, folder, extra = CASES[name]

    @needs_shared(folder)
    def check():
        from beeray.cli import main

        out = tmp_path / name
        assert main(["prepare", kind, "--input", str(SHARED_DATA / folder), "--out", str(out), *extra]) == 0
        stats = json.loads((out / "stats.json").read_text())
        if name in SIZES:
            assert (stats["users"], stats["items"], stats["interactions"]) == SIZES[name]
        got = digest(out)
        assert got == RECORDED[name], [f for f in got if got[f] != RECORDED[name][f]]

    check()
