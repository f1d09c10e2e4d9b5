"""experiments/results.py's page: a data set's section is regenerated from its runs, or kept as the page has it."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_results():
    spec = importlib.util.spec_from_file_location("results", REPO / "experiments" / "results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sections_without_runs_are_kept_verbatim_and_every_data_set_has_markers():
    results = load_results()
    current = (REPO / "docs" / "results.md").read_text()
    blocks = results.kept_blocks(current)
    # every section on the committed page can be kept by a later --only run of another data set
    for name in results.DATASETS:
        assert ("section", name) in blocks and ("commands", name) in blocks, name
    regenerated = results.page({}, current)
    for block in blocks.values():
        assert "\n".join(block).strip() in regenerated
    assert regenerated.count("<!-- section ") == len([k for k in blocks if k[0] == "section"])
    # a block without its closing marker is not taken
    assert results.kept_blocks("<!-- section ml -->\ntext\n") == {}
