"""SANSA (Spišák et al., RecSys 2023): a sparse approximate inverse of EASE's item-item solution.

Optional: the `sansa` package needs scikit-sparse, which has no wheels and builds only against the
SuiteSparse C library (`apt install libsuitesparse-dev` and a C compiler), so the default set-up
cannot install it. `pip install 'beeray[sansa]'` where SuiteSparse is present.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from beeray.baselines.base import Baseline, Context, dense_columns
from beeray.errors import BeerayError


def installed() -> bool:
    try:
        import sansa  # noqa: F401
    except ImportError:
        return False
    return True


class SANSA(Baseline):
    name = "sansa"
    needs = "interactions"
    grid = {"l2": [10.0, 100.0, 500.0]}
    defaults = {"l2": 100.0, "weight_matrix_density": 5e-3}
    summary = "sansa's sparse approximate EASE (optional extra: needs SuiteSparse)"

    def fit(self, ctx: Context) -> "SANSA":
        if not installed():
            raise BeerayError("baseline sansa is not installed: it needs the SuiteSparse C library "
                              "(apt install libsuitesparse-dev) and `pip install 'beeray[sansa]'`")
        from sansa import (SANSA as Model, CHOLMODGramianFactorizerConfig, SANSAConfig,
                           UMRUnitLowerTriangleInverterConfig)

        self.model = Model(SANSAConfig(l2=float(self.params["l2"]),
                                       weight_matrix_density=float(self.params["weight_matrix_density"]),
                                       gramian_factorizer_config=CHOLMODGramianFactorizerConfig(),
                                       lower_triangle_inverter_config=UMRUnitLowerTriangleInverterConfig()))
        self.model.fit(sp.csr_matrix(ctx.train, dtype=np.float32))
        return self

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        return dense_columns(self.model.forward(sp.csr_matrix(source, dtype=np.float32)), candidates)
