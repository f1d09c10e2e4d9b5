"""`beeray recommend`: the top-k items for one history, scored exactly as the evaluator scores.

A history is a set of item ids; every other item of the catalog is a candidate (what a user
already has is never recommended, as in the evaluator's time split). The scores are the
evaluator's CBF scorer, relu(x Â Âᵀ − x) over the candidates, and the ranking is its top-k (ties
by catalog order), so what a person sees here is what `beeray evaluate` measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from beeray.errors import BeerayError
from beeray.evaluator import CBFScorer, top_k_rows


@dataclass
class Recommendation:
    item_id: str
    score: float
    row: int  # the item's row in the catalog


def history_rows(ids: np.ndarray, history: list[str], source: str) -> np.ndarray:
    position = {str(i): r for r, i in enumerate(ids)}
    unknown = [h for h in history if str(h) not in position]
    if unknown:
        raise BeerayError(f"{source}: no item with id {', '.join(repr(u) for u in unknown[:5])}"
                          f"{' and more' if len(unknown) > 5 else ''}")
    return np.unique([position[str(h)] for h in history])


def recommend(item_emb: np.ndarray, ids: np.ndarray, history: list[str], k: int = 20,
              source: str = "the catalog", allowed: np.ndarray | None = None,
              exclude_history: bool = True) -> list[Recommendation]:
    """The k best candidates for `history` (item ids) by CBF over unit-norm `item_emb` rows. `allowed`: a
    mask of the rows that may be recommended (all by default); `exclude_history`: never the history's own
    items (the evaluator's rule; off, they compete like any other)."""
    if not history:
        raise BeerayError("an empty history: give at least one item id")
    if k <= 0:
        raise BeerayError(f"k must be > 0, got {k}")
    rows = history_rows(ids, history, source)
    n = len(ids)
    pool = np.arange(n) if allowed is None else np.flatnonzero(allowed)
    candidates = np.setdiff1d(pool, rows) if exclude_history else pool
    if candidates.size == 0:
        raise BeerayError("the history holds every item of the catalog: nothing left to recommend")
    x = sp.csr_matrix((np.ones(rows.size), rows, [0, rows.size]), shape=(1, n))
    scores = CBFScorer(item_emb).scores(x, candidates)
    top = top_k_rows(scores, min(k, candidates.size))[0]
    return [Recommendation(str(ids[candidates[c]]), float(scores[0, c]), int(candidates[c])) for c in top]


def catalog_embeddings(*, model: str | None = None, items=None, embeddings=None, id_column: str = "item_id",
                       text_column: str = "text", batch_size: int | None = None,
                       trust_remote_code: bool = False) -> tuple[dict[str, str], np.ndarray, np.ndarray, str]:
    """(texts by id, ids, unit-norm embeddings, where they came from) of a catalog: a `beeray embed`
    folder (`embeddings`, checked against `model` when given), else `items` encoded with `model`."""
    from beeray.models import DEFAULT_MODEL

    catalog = None
    if items is not None:
        from beeray.data.items import read_item_texts

        catalog = read_item_texts(items, id_column, text_column, bad_rows="skip")
    if embeddings is not None:
        from beeray.embedding import load_embeddings

        ids, emb = load_embeddings(embeddings, model=model)
        source = str(embeddings)
    elif catalog is not None:
        from beeray.embedding import BATCH_SIZE
        from beeray.evaluator import encode_items
        from beeray.models import load_model

        encoder = load_model(model or DEFAULT_MODEL, trust_remote_code=trust_remote_code)
        emb = encode_items(encoder, catalog.texts, batch_size or BATCH_SIZE["cpu"], show_progress=False)
        ids, source = catalog.ids, str(items)
    else:
        raise BeerayError("give --items (to encode with --model, and for the texts) or --embeddings")
    texts = dict(zip(catalog.ids, catalog.texts)) if catalog is not None else {}
    return texts, ids, emb, source
