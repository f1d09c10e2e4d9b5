"""The baselines' validation search: coordinate ascent over each hyperparameter's ladder."""

from __future__ import annotations

import itertools

import pytest

from beeray.baselines import Baseline, ladder_edges, search


class Ladders(Baseline):
    name = "ladders"
    grid = {"a": [1, 2, 4, 8, 16, 32, 64], "b": [0.0, 0.1, 1.0, 10.0], "kind": ["x", "y", "z"]}
    defaults = {"a": 2, "b": 10.0, "kind": "x"}


def quiet(_msg: str) -> None:
    pass


def bowl(peak: dict):
    """A validation metric with one maximum at `peak` (separable: each axis its own bowl)."""
    calls = []

    def value(p: dict) -> float:
        calls.append(dict(p))
        ga = -abs(Ladders.grid["a"].index(p["a"]) - Ladders.grid["a"].index(peak["a"]))
        gb = -abs(Ladders.grid["b"].index(p["b"]) - Ladders.grid["b"].index(peak["b"]))
        return ga + gb + (0.5 if p["kind"] == peak["kind"] else 0.0)
    return value, calls


@pytest.mark.parametrize("peak", [{"a": 8, "b": 0.1, "kind": "z"}, {"a": 64, "b": 0.0, "kind": "y"},
                                  {"a": 2, "b": 10.0, "kind": "x"}])
def test_the_search_finds_the_peak_and_tries_both_neighbours(peak):
    value, calls = bowl(peak)
    chosen, tried = search(Ladders, {}, value, quiet)
    assert chosen == peak
    every = [dict(zip(Ladders.grid, combo)) for combo in itertools.product(*Ladders.grid.values())]
    assert len(calls) == len(tried) < len(every) / 3  # each configuration fitted once, far fewer than all
    for key in ("a", "b"):
        ladder = Ladders.grid[key]
        i = ladder.index(peak[key])
        for j in (i - 1, i + 1):
            if 0 <= j < len(ladder):
                assert tuple(sorted({**peak, key: ladder[j]}.items())) in tried, (key, ladder[j])
    # ends of ordered ladders are reported; a categorical choice never is
    edges = ladder_edges(Ladders, chosen, {})
    assert edges == {k: ("low" if peak[k] == Ladders.grid[k][0] else "high") for k in ("a", "b")
                     if peak[k] in (Ladders.grid[k][0], Ladders.grid[k][-1])}


def test_fixed_settings_are_not_searched():
    value, calls = bowl({"a": 8, "b": 0.1, "kind": "z"})
    chosen, _ = search(Ladders, {"a": 4, "kind": "y"}, value, quiet)
    assert chosen == {"a": 4, "b": 0.1, "kind": "y"}
    assert {c["a"] for c in calls} == {4} and {c["kind"] for c in calls} == {"y"}
    assert ladder_edges(Ladders, {"a": 64, "b": 0.1}, {"a": 64}) == {}


def test_a_plateau_does_not_move_the_choice():
    """Ties do not count as improvement: a flat metric keeps the defaults (and tries only their neighbours)."""
    calls = []

    def flat(p):
        calls.append(p)
        return 0.0

    chosen, _ = search(Ladders, {}, flat, quiet)
    assert chosen == Ladders.start() == {"a": 2, "b": 10.0, "kind": "x"}
    assert len(calls) == 1 + 2 + 1 + 2  # start; a up and down; b down (it is at the top); the other kinds
