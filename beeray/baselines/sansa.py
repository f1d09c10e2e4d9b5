"""SANSA (Spišák et al., RecSys 2023): a sparse approximate inverse of EASE's item-item solution.

The authors' `sansa` package needs scikit-sparse, which has no wheels and builds only against the
SuiteSparse C library (CHOLMOD) with a C compiler, so the default set-up (`make setup`, `make demo`)
leaves it out. `make sansa` installs it into .venv: Debian's libsuitesparse-dev when it is missing (as
root), then the pinned `beeray[sansa]` extra (pyproject.toml says why each pin); `make test` runs it
first. Elsewhere: install SuiteSparse's headers (`libsuitesparse-dev`, `brew install suite-sparse`),
then `make sansa`.

With weight_matrix_density=1 nothing is dropped and SANSA's item-item weights are EASE's with the
diagonal at -1 instead of 0, so its scores are EASE's minus the user's own items: the same ranking
of every item the user has not seen (tests/test_sansa.py).
"""

from __future__ import annotations

import gc
import logging

import numpy as np
import scipy.sparse as sp

from beeray.baselines.base import Baseline, Context, dense_columns
from beeray.errors import BeerayError

MISSING = ("baseline sansa is not installed: `make sansa` installs it (it builds scikit-sparse against "
           "the SuiteSparse C library: apt install libsuitesparse-dev, then pip install 'beeray[sansa]')")


def _import_sansa():
    """`import sansa`, undoing what that import does to logging.

    sansa's model module calls logging.basicConfig(level=INFO) on import: a stderr handler on the root
    logger that would print every library's INFO lines for the rest of the process. The root logger is
    put back as it was, and sansa's own per-step INFO lines (and its advice to try its other factorizer)
    are kept quiet.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        import sansa
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    logging.getLogger("sansa").setLevel(logging.ERROR)
    return sansa


def installed() -> bool:
    try:
        _import_sansa()
    except ImportError:
        return False
    return True


class SANSA(Baseline):
    name = "sansa"
    needs = "interactions"
    # l2 is EASE's penalty on the same Gram matrix (X^T X + l2 I), so the ladder is EASE's.
    grid = {"l2": [1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0]}
    edges = {"l2": "1 to 30,000, EASE's ladder: the same penalty on the same item-item Gram matrix"}
    defaults = {"l2": 100.0, "weight_matrix_density": 5e-3}
    summary = "sansa's sparse approximate EASE (optional: `make sansa`, needs SuiteSparse)"

    def fit(self, ctx: Context) -> "SANSA":
        try:
            sansa = _import_sansa()
        except ImportError as e:
            raise BeerayError(f"{MISSING} ({e})") from None

        self.model = sansa.SANSA(sansa.SANSAConfig(
            l2=float(self.params["l2"]),
            weight_matrix_density=float(self.params["weight_matrix_density"]),
            gramian_factorizer_config=sansa.CHOLMODGramianFactorizerConfig(),
            lower_triangle_inverter_config=sansa.UMRUnitLowerTriangleInverterConfig()))
        # sansa calls gc.collect() about 20 times a fit, and each walks every object of this process (torch,
        # transformers, Ray: 0.4 s each on 2 cores, 13 s of a fit of 400 items that otherwise takes 0.05 s).
        # Frozen, they are skipped: a collection sees only what the fit made. If the process had frozen
        # objects of its own, everything stays frozen (gc.unfreeze cannot thaw only ours).
        frozen = gc.get_freeze_count()
        gc.freeze()
        try:
            self.model.fit(sp.csr_matrix(ctx.train, dtype=np.float32))
        finally:
            if not frozen:
                gc.unfreeze()
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return dense_columns(self.model.forward(sp.csr_matrix(source, dtype=np.float32)), candidates)
