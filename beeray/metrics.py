"""The names of beeray's metrics, defined once for every layer that reads or writes them.

A bottom module (it imports nothing): the config validates a search's metric against these, the
evaluator computes them, the reports and trackers print and log them.
"""

METRICS: tuple[str, ...] = ("recall@20", "recall@50", "ndcg@100")
VAL_METRICS: tuple[str, ...] = tuple(f"val_{m}" for m in METRICS)  # what training reports per epoch
STRATA = ("head", "middle", "tail")  # thirds of the candidates' target interactions, most popular first
POPULARITY_METRICS: tuple[str, ...] = (*(f"recall@20_{s}" for s in STRATA), "recall@20_micro",
                                       "popularity_percentile@20")
