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


def test_a_section_marks_edges_and_gives_paired_verdicts():
    """A data set's table: a choice on an end of its ladder is marked with the ladder's reason, the
    zero-shot row at the trained length is labelled, and every row gets a paired, Holm-adjusted verdict
    against the beeFormer row (compare stores row minus reference; the page shows beeFormer minus row)."""
    from beeray.baselines import BASELINES

    results = load_results()
    model = "/runs/x/beeformer/model"
    metrics = {"recall@20": 0.2, "recall@50": 0.3, "ndcg@100": 0.25,
               "stderr": {"recall@20": 0.01, "recall@50": 0.01, "ndcg@100": 0.01},
               "popularity": {"recall@20_head": 0.1, "recall@20_middle": 0.1, "recall@20_tail": 0.1,
                              "popularity_percentile@20": 50.0}}
    rows = {"all-MiniLM-L6-v2": metrics, "/runs/results/minilm-msl64": metrics, model: metrics,
            "baseline:itemknn": {**metrics, "params": {"K": 3200, "similarity": "cosine"}, "edges": {"K": "high"}},
            "baseline:ease": {**metrics, "params": {"l2": 300.0}, "edges": {}}}
    cell = {"diff": -0.05, "stderr": 0.01, "p_holm": 0.001, "verdict": "worse"}
    paired = {name: {m: dict(cell) for m in ("recall@20", "recall@50", "ndcg@100")} for name in rows if name != model}
    paired["baseline:ease"]["recall@20"] = {"diff": 0.004, "stderr": 0.01, "p_holm": 0.7, "verdict": "no clear difference"}
    comp = {"datasets": {"shop": {}}, "results": {name: {"shop": res} for name, res in rows.items()},
            "oracle": {"shop": metrics}, "paired": {"alpha": 0.05, "by_reference": {model: {"shop": paired}}}}
    r = {"spec": {**results.DATASETS["ml"], "baselines": ["itemknn", "ease"]}, "compare": comp,
         "stats": {"users": 10, "items": 20, "interactions": 30,
                   "split": {"test": {"users": 5}, "test_items": 7, "train_full_users": 64}},
         "timing": {"train": 60.0}, "train_config": {"epochs": 1, "batch_size": 64, "m": 256, "max_seq_length": 64,
                                                     "lr": 5e-5}}
    text = "\n".join(results.section(r))
    assert "| itemknn (K=3200 (**edge: high**))" in text
    assert BASELINES["itemknn"].edges["K"] in text  # why the ladder stops there
    assert "| ease (l2=300.0) |" in text
    assert "MiniLM zero-shot (CBF), 64 tokens" in text and "MiniLM zero-shot (CBF), 256 tokens" in text
    assert "- against itemknn: Recall@20 +0.0500 ± 0.0100 (better, p_holm 0.001)" in text
    assert "- against ease: Recall@20 -0.0040 ± 0.0100 (no clear difference, p_holm 0.7)" in text
    # the same verdicts in one line: beeFormer beats every row on both metrics but ease on Recall@20
    assert ("**Where the beeFormer row stands** (both metrics, paired): better than MiniLM zero-shot (CBF), 256 "
            "tokens, MiniLM zero-shot (CBF), 64 tokens, itemknn; split by metric against ease (Recall@20 tie, "
            "NDCG@100 better).") in text


def test_a_section_names_its_split_and_how_the_beeformer_epochs_were_chosen():
    """Issue 31: the section prints the split's digest, an MPNet zero-shot row, and the beeFormer row's
    validation run (its curve, the kept epoch) and refit (that many epochs on train + validation)."""
    results = load_results()
    model = "/runs/x/beeformer/model"
    metrics = {"recall@20": 0.2, "recall@50": 0.3, "ndcg@100": 0.25,
               "stderr": {"recall@20": 0.01, "recall@50": 0.01, "ndcg@100": 0.01},
               "popularity": {"recall@20_head": 0.1, "recall@20_middle": 0.1, "recall@20_tail": 0.1,
                              "popularity_percentile@20": 50.0}, "split_digest": "ab" * 32}
    rows = {"all-MiniLM-L6-v2": metrics, "all-mpnet-base-v2": metrics, model: metrics}
    cell = {"diff": -0.05, "stderr": 0.01, "p_holm": 0.001, "verdict": "worse"}
    paired = {name: {m: dict(cell) for m in ("recall@20", "recall@50", "ndcg@100")} for name in rows if name != model}
    comp = {"datasets": {"shop": {}}, "results": {name: {"shop": res} for name, res in rows.items()},
            "oracle": {"shop": metrics}, "paired": {"alpha": 0.05, "by_reference": {model: {"shop": paired}}}}
    curve = [{"epoch": 0, "step": 0, "val_ndcg@100": 0.2}, {"epoch": 1, "step": 21, "val_ndcg@100": 0.3},
             {"epoch": 2, "step": 42, "val_ndcg@100": 0.35}, {"epoch": 3, "step": 63, "val_ndcg@100": 0.34}]
    r = {"spec": {**results.DATASETS["ml"], "baselines": []}, "compare": comp,
         "stats": {"users": 10, "items": 20, "interactions": 30, "split": {"test": {"users": 5}, "test_items": 7}},
         "timing": {"train": 600.0, "validation run": 1200.0},
         "train_config": {"epochs": 2, "batch_size": 32, "m": 256, "max_seq_length": 64, "lr": 5e-5},
         "kept": {"epoch": 2, "rule": "best val ndcg@100", "score": 0.35, "epochs_run": 3, "stopped_early": False},
         "validation_curve": curve, "refit_steps": 42}
    text = "\n".join(results.section(r))
    assert f"Scored on the split with digest `sha256:{'ab' * 32}`" in text
    assert "| MPNet zero-shot (CBF, all-mpnet-base-v2), 384 tokens |" in text
    assert "a validation run of 3 epochs on the train part (63 steps, 20.0 minutes)" in text
    assert "epoch 2 (step 42) 0.3500" in text and "kept epoch 2;" in text
    assert "refitted on train + validation for 2 epoch(s) = 42 optimizer steps (10.0 minutes" in text
    # A one-epoch section (Goodbooks on this CPU): no refit; the row is the validation run's kept model.
    one = {**r, "timing": {"validation run": 1200.0}, "refit_steps": None,
           "kept": {**r["kept"], "epoch": 1, "epochs_run": 1}, "validation_curve": curve[:2]}
    text = "\n".join(results.section(one))
    assert "kept epoch 1; the row is that run's kept model, trained on the train part only" in text
    assert "refitted" not in text.split("beeFormer row:")[1]
    assert "a validation run of 1 epoch on the train part" in text
    assert "the validation cold items are held out of its training" in text
    # On a time split there are no cold items: what the row has not trained on is the validation period.
    timed = {**one, "stats": {**one["stats"], "split": {**one["stats"]["split"], "kind": "time",
                                                        "val": {"target_interactions": 11181}}}}
    text = "\n".join(results.section(timed))
    assert "it has not trained on the validation part's 11,181 interactions" in text
    assert "cold items" not in text.split("beeFormer row:")[1].split("\n")[0]
