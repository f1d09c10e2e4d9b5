"""Heater (Zhu, Sefati, Saadatpanah, Caverlee, SIGIR 2020) for cold-start items, fed with sentence embeddings.

Faithful to the authors' reference code (github.com/Zziwei/Heater--Cold-Start-Recommendation, commit
355b9b8: model.py and main_CiteULike.py, their item cold-start case with text content), in torch:

- collaborative ("CF") embeddings U, V pretrained on the warm items and then frozen, standardised
  column-wise over their non-zero rows and clipped, U to ±5 and V to ±1 (main_CiteULike.py:218-219,
  utils.py:87-124); the content is a sentence encoder's item embeddings, standardised over the warm
  items and clipped to ±5 (main_CiteULike.py:232);
- the content -> CF-space **mixture of experts**: `n_experts` one-layer tanh experts of the CF width mixed
  by an unnormalised tanh gate, v_c = tanh(Σ_k g_k(c) · tanh(W_k c + b_k)) (model.py:105-124; 5 experts of
  200 units, main_CiteULike.py:253-265). Here the experts are one Linear(content, n_experts x cf) whose
  k-th block of rows is expert k: one matrix product instead of five, each weight drawn from the same
  truncated normal (model.py:11), the same function and gradients;
- **randomized training**: in each batch of 1,024 (user, item) pairs (main_CiteULike.py:24) half the pairs
  (dropout 0.5) replace the item's CF vector by v_c (main_CiteULike.py:96-105, model.py:126-131);
- towers per side: Dense + BatchNorm + tanh, then a linear embedding (model.py:171-191); score = their
  dot product; loss (model.py:198): mean squared error against 1 (interaction) / 0 (5 uniform negatives
  per positive drawn with replacement from the warm items, main_CiteULike.py:77, utils.py:251-260)
  + alpha · Σ_batch ‖v_c − V_i‖² + reg · Σ‖W‖² over the dense layers' weights and biases (not the batch
  norms': model.py:27, 191-192); the reg term is applied as SGD weight decay 2·reg on exactly those
  parameters, which is the same update;
- SGD with momentum 0.9 (model.py:203), lr 0.005 (main_CiteULike.py:262) multiplied by 0.8 after every
  10th epoch (main_CiteULike.py:33-34, 126-127; their LastFM and XING scripts decay faster,
  main_LastFM.py:33-34, main_XING.py:32-33: we follow the text-content, item cold-start CiteULike run).

**Epochs, as the authors choose them.** They train 100 epochs (main_CiteULike.py:29, 76) with no early
stop, score validation after every epoch (`--eval-every` default 1, main_CiteULike.py:28, 130-133, 260)
and report the test metrics of the epoch with the best validation score so far (main_CiteULike.py:
136-143, the sum of recall@20/50/100). Here, fitted for the validation search (`ctx.validate` set), the
model trains up to `epochs` (100), scores the validation split (the search's NDCG@100) after every
`eval_every`-th epoch (1, theirs) and after the last, keeps the best epoch's weights and item vectors,
restores them at the end, and `fitted()` gives that epoch count as the refit's `epochs` (with the
curve). Without `ctx.validate` (the test refit on train + validation) it trains exactly
`params["epochs"]` epochs. The initial weights come from the seed, the learning-rate steps from the
epoch index only, and scoring validation draws nothing from the training's random generators and
leaves weights and batch-norm statistics alone, so the refit of N epochs follows the validation run's
first N epochs step for step (on its own data: the refit's adds the validation interactions).

One departure, for this CPU: an early stop after `patience` (10) validations without improvement, where
the authors always run all 100. On Goodbooks (961 batches an epoch) an epoch takes ~30 s on one core,
so their schedule is ~50 min per fit, ~2.5 h for the two backbones and the refit; a patience of 10
epochs spans a whole learning-rate step. `patience=0` runs the authors' schedule exactly. `threads`
(1): torch's two OpenMP threads on two cores shared with other jobs wait on each other at every
matrix product (an epoch took 800 s instead of 30 s), so training uses one.

**Collaborative backbone, chosen on validation** (`backbone`, both tried by the search). The authors
feed pretrained 200-dimensional factors saved as U_BPR.npy / V_BPR.npy (main_CiteULike.py:209-210;
data/LastFM/U_BPR.npy is float32 of shape (1892, 200)); the code and settings that produced them are
not in the repository, whose only factorisation call is a never-executed notebook cell
`implicit.als.AlternatingLeastSquares(factors=200)` with implicit's defaults (data/LastFM/
data_generation.ipynb, its last cell). The two backbones here:
- "als": implicit's ALS (beeray.baselines.als.ALS) with `factors` (200, the authors' width) and
  regularization 0.01, alpha 1, 15 iterations, implicit's defaults, i.e. that notebook cell. They are not
  tuned: ALS's own validation search cannot choose them on this item split, because the validation
  items are cold (no training interaction), so ALS alone cannot score them, and searching them through
  Heater would multiply every Heater fit (up to 100 epochs) by ALS's ladders. Training users are
  ALS's fitted user factors; a scored user's are solved from their source history against the item
  factors (implicit's recalculate_user), as the ALS baseline does;
- "elsa": ELSA's item embeddings (beeray.baselines.elsa.ELSA with `factors`, its other settings its
  own defaults), rows L2-normalised; a user is x Â, the user's history row L1-normalised (as ELSA
  trains on it) times those embeddings: the user side of ELSA's decoder x Â Âᵀ, computed the same way
  for training and scoring users.
Either way only warm items (with training interactions) keep a CF vector; a cold item's is zero.

At scoring time a user's CF vector comes from their source history as above, a cold candidate takes
the content branch, and the evaluator ranks the candidates exactly as for a text encoder.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from beeray.baselines.als import ALS
from beeray.baselines.base import Baseline, Context, Fitted


def _standardize(x: np.ndarray, clip: float, rows: np.ndarray | None = None):
    """Column-wise standardisation fitted on `rows` (default: the non-zero rows), then clipped; returns
    the transform so that new rows (users folded in at scoring time) get the same one."""
    rows = np.flatnonzero(np.abs(x).sum(axis=1) > 0) if rows is None else rows
    mean, std = x[rows].mean(axis=0), x[rows].std(axis=0) + 1e-8

    def transform(y: np.ndarray) -> np.ndarray:
        out = np.clip((y - mean) / std, -clip, clip)
        out[np.abs(y).sum(axis=1) == 0] = 0.0  # a zero row (no CF vector) stays zero
        return out.astype(np.float32)

    return transform


class HeaterNet(nn.Module):
    def __init__(self, content_dim: int, cf_dim: int, n_experts: int, hidden: int) -> None:
        super().__init__()
        self.n_experts, self.cf_dim = n_experts, cf_dim
        self.gate = nn.Linear(content_dim, n_experts)
        # All experts in one layer: rows k*cf_dim:(k+1)*cf_dim of the weight (and bias) are expert k.
        self.experts = nn.Linear(content_dim, n_experts * cf_dim)
        self.item_tower = nn.Sequential(nn.Linear(cf_dim, hidden), nn.BatchNorm1d(hidden, momentum=0.1), nn.Tanh())
        self.user_tower = nn.Sequential(nn.Linear(cf_dim, hidden), nn.BatchNorm1d(hidden, momentum=0.1), nn.Tanh())
        self.item_out = nn.Linear(hidden, hidden)
        self.user_out = nn.Linear(hidden, hidden)
        for m in self.modules():  # the reference initialises every dense layer this way (model.py:11-17)
            if isinstance(m, nn.Linear):
                # expert by expert, each block drawn as its own layer would be (the same stream as five layers)
                for block in m.weight.split(cf_dim) if m is self.experts else (m.weight,):
                    nn.init.trunc_normal_(block, std=0.01, a=-0.02, b=0.02)
                nn.init.zeros_(m.bias)

    def content(self, c: torch.Tensor) -> torch.Tensor:
        """The mixture of experts: content -> CF space, tanh(Σ_k g_k(c) · tanh(W_k c + b_k))."""
        gate = torch.tanh(self.gate(c))  # B x K, unnormalised, as in the reference
        experts = torch.tanh(self.experts(c)).view(c.shape[0], self.n_experts, self.cf_dim)  # B x K x d
        return torch.tanh(torch.bmm(gate.unsqueeze(1), experts).squeeze(1))

    def items(self, v: torch.Tensor) -> torch.Tensor:
        return self.item_out(self.item_tower(v))

    def users(self, u: torch.Tensor) -> torch.Tensor:
        return self.user_out(self.user_tower(u))

    def dense_parameters(self) -> list[nn.Parameter]:
        """What the reference's L2 term covers: every dense layer's weight and bias, no batch norm."""
        return [p for m in self.modules() if isinstance(m, nn.Linear) for p in (m.weight, m.bias)]

    def penalty(self) -> torch.Tensor:
        """Σ‖W‖² over the dense layers (the reference's reg_loss before its factor reg)."""
        return sum(p.pow(2).sum() for p in self.dense_parameters())


def sgd(net: HeaterNet, lr: float, reg: float) -> torch.optim.SGD:
    """The reference's optimizer (model.py:203) for its loss's L2 term reg · Σ‖W‖² over the dense layers
    (model.py:191-192): that term adds 2·reg·W to each dense gradient, which is SGD's weight decay 2·reg
    on exactly those parameters, without computing the sum at every step."""
    dense = net.dense_parameters()
    other = [q for q in net.parameters() if all(q is not d for d in dense)]
    return torch.optim.SGD([{"params": dense, "weight_decay": 2 * reg}, {"params": other}], lr=lr, momentum=0.9)


class Heater(Baseline):
    name = "heater"
    needs = "text"
    grid = {"backbone": ["als", "elsa"]}
    edges: ClassVar[dict[str, str]] = {
        "epochs": "from the first validated epoch (validation is scored after whole epochs, as the authors "
                  "do) to the authors' 100 (main_CiteULike.py:29)",
        "backbone": "the two collaborative models here whose item factors Heater can map texts into "
                    "(the authors' BPR factors came from code they did not publish)",
    }
    # The authors' settings (main_CiteULike.py:24-34, 253-265); `factors` is their rank 200 (CF width and
    # tower width); 100 epochs and validation after each (eval_every 1) are theirs too. patience 10 (an early
    # stop; theirs is none: 0 here) and threads 1 are this CPU's: see the module docstring.
    defaults = {"backbone": "als", "epochs": 100, "eval_every": 1, "patience": 10, "factors": 200, "n_experts": 5,
                "dropout": 0.5, "negatives": 5, "lr": 0.005, "lr_decay": 0.8, "decay_every": 10,
                "alpha": 1e-4, "reg": 1e-4, "batch_size": 1024,
                "als_regularization": 0.01, "als_alpha": 1.0, "als_iterations": 15, "threads": 1}
    summary = "Heater: mixture-of-experts map from text embeddings into ALS or ELSA factors, randomized training"

    # --- the collaborative backbone -------------------------------------------------------------------

    def _fit_backbone(self, ctx: Context, warm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw (unstandardised) CF vectors of the training users and of the items (cold rows zero)."""
        p = self.params
        plain = dataclasses.replace(ctx, validate=None)  # the backbone is never scored on its own here
        item_cf = np.zeros((ctx.train.shape[1], int(p["factors"])), dtype=np.float32)
        if p["backbone"] == "als":
            self.als = ALS(factors=int(p["factors"]), regularization=float(p["als_regularization"]),
                           alpha=float(p["als_alpha"]), iterations=int(p["als_iterations"])).fit(plain)
            item_cf[warm] = self.als.model.item_factors[warm]
            return np.asarray(self.als.model.user_factors, dtype=np.float32), item_cf
        if p["backbone"] == "elsa":
            from beeray.baselines.elsa import ELSA

            item_cf[warm] = np.asarray(ELSA(factors=int(p["factors"])).fit(plain).embeddings, dtype=np.float32)[warm]
            self.elsa_items = item_cf
            return self._elsa_users(ctx.train), item_cf
        raise ValueError(f"heater: unknown backbone {p['backbone']!r} (als or elsa)")

    def _elsa_users(self, history: sp.spmatrix) -> np.ndarray:
        x = sp.csr_matrix(history, dtype=np.float32)
        x = sp.diags(1.0 / np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1.0)).astype(np.float32) @ x
        return np.asarray(x @ self.elsa_items, dtype=np.float32)

    def _user_cf(self, source: sp.spmatrix) -> np.ndarray:
        """Standardised CF vectors of users given by their histories; cached per history matrix, since the
        backbone is frozen and validation scores the same users after every epoch."""
        source = sp.csr_matrix(source, dtype=np.float32)
        h = hashlib.blake2b(np.asarray(source.shape, dtype=np.int64).tobytes(), digest_size=16)
        h.update(np.ascontiguousarray(source.indptr, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(source.indices, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(source.data, dtype=np.float32).tobytes())
        key = h.hexdigest()
        if key not in self._user_cache:
            if self.params["backbone"] == "als":
                raw = self.als.model.recalculate_user(np.arange(source.shape[0]), source)
            else:
                raw = self._elsa_users(source)
            if len(self._user_cache) > 64:
                self._user_cache.clear()
            self._user_cache[key] = self.user_transform(np.atleast_2d(np.asarray(raw, dtype=np.float32)))
        return self._user_cache[key]

    # --- training -------------------------------------------------------------------------------------

    def fit(self, ctx: Context) -> "Heater":
        threads = torch.get_num_threads()
        torch.set_num_threads(int(self.params["threads"]))
        try:
            return self._fit(ctx)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, ctx: Context) -> "Heater":
        p = self.params
        gen = torch.Generator().manual_seed(ctx.seed)
        rng = np.random.default_rng(ctx.seed)
        self._fitted, self._user_cache = Fitted(params=dict(p)), {}
        warm = np.flatnonzero(ctx.train_counts > 0)
        user_cf, item_cf = self._fit_backbone(ctx, warm)
        self.user_transform = _standardize(user_cf, clip=5.0)
        self.v = torch.from_numpy(_standardize(item_cf, clip=1.0)(item_cf))
        self.cold = torch.from_numpy(np.abs(item_cf).sum(axis=1) == 0)
        u = torch.from_numpy(self.user_transform(user_cf))
        content = ctx.item_embeddings()
        self.content = torch.from_numpy(_standardize(content, clip=5.0, rows=warm)(content))
        with torch.random.fork_rng(devices=[]):  # the initial weights come from the seed (torch's global stream
            torch.manual_seed(ctx.seed)           # is left as it was), so a refit starts where validation did
            self.net = HeaterNet(self.content.shape[1], self.v.shape[1], int(p["n_experts"]), int(p["factors"]))
        opt = sgd(self.net, lr=float(p["lr"]), reg=float(p["reg"]))
        decay = torch.optim.lr_scheduler.StepLR(opt, step_size=int(p["decay_every"]), gamma=float(p["lr_decay"]))
        train = sp.coo_matrix(ctx.train)
        pos_users, pos_items = train.row.astype(np.int64), train.col.astype(np.int64)

        validate, every, patience = ctx.validate, int(p["eval_every"]), int(p["patience"])
        epochs = int(p["epochs"])
        curve: dict[str, float] = {}
        best = {"score": -np.inf, "epoch": 0, "state": None, "vectors": None}
        self.losses: list[float] = []
        for epoch in range(1, epochs + 1):
            self.net.train()
            self.losses.append(self._epoch(u, pos_users, pos_items, warm, opt, gen, rng))
            decay.step()
            if validate is None or (epoch % every and epoch != epochs):
                continue
            self._item_vectors()
            score = float(validate(self))
            curve[str(epoch)] = score
            if score > best["score"]:
                best = {"score": score, "epoch": epoch, "state": copy.deepcopy(self.net.state_dict()),
                        "vectors": self.item_vectors.copy()}
            elif patience and (epoch - best["epoch"]) // every >= patience:
                break
        if validate is None or best["state"] is None:
            self._item_vectors()
            return self
        self.net.load_state_dict(best["state"])
        self.net.eval()
        self.item_vectors = best["vectors"]
        edges = {}
        if best["epoch"] == epochs:
            edges = {"epochs": "high"}  # the last epoch allowed: an edge
        elif best["epoch"] == min(every, epochs):
            edges = {"epochs": "low"}  # the first validation: nothing earlier was scored
        # the test refit trains exactly the best epoch's count
        self._fitted = Fitted(params={**p, "epochs": best["epoch"]}, edges=edges,
                              record={"best_epoch": best["epoch"], "epochs_trained": len(self.losses),
                                      "val_ndcg@100": curve})
        return self

    def fitted(self) -> Fitted:
        return getattr(self, "_fitted", None) or super().fitted()  # before a fit: the settings given

    def _epoch(self, u: torch.Tensor, pos_users: np.ndarray, pos_items: np.ndarray, warm: np.ndarray,
               opt: torch.optim.Optimizer, gen: torch.Generator, rng: np.random.Generator) -> float:
        """One pass over every positive pair plus `negatives` uniform negatives per positive from the warm
        items (drawn with replacement, the user's positives not filtered: utils.py:251-260, called at
        main_CiteULike.py:77), in random order; returns the summed batch losses."""
        p = self.params
        neg, size = int(p["negatives"]), int(p["batch_size"])
        alpha, dropout = float(p["alpha"]), float(p["dropout"])
        users = torch.from_numpy(np.concatenate([pos_users, np.repeat(pos_users, neg)]))
        items = torch.from_numpy(np.concatenate([pos_items, rng.choice(warm, size=pos_items.size * neg)]))
        target = torch.cat([torch.ones(pos_items.size), torch.zeros(pos_items.size * neg)])
        order = torch.randperm(users.numel(), generator=gen)
        total = 0.0
        for start in range(0, order.numel(), size):
            idx = order[start:start + size]
            n = idx.numel()
            if n < 2:  # batch norm needs two rows
                continue
            bi = items[idx]
            v_in = self.v[bi]
            vc = self.net.content(self.content[bi])
            # randomized training: floor(dropout · n) pairs of the batch see the item's content, not its CF
            drop = torch.zeros(n, 1, dtype=torch.bool)
            drop[torch.randperm(n, generator=gen)[: int(np.floor(dropout * n))]] = True
            pred = (self.net.users(u[users[idx]]) * self.net.items(torch.where(drop, vc, v_in))).sum(-1)
            loss = (pred - target[idx]).pow(2).mean() + alpha * (vc - v_in).pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        return total

    def _item_vectors(self) -> None:
        """Every item's tower output in inference mode: its CF vector, or for a cold item its content's."""
        self.net.eval()
        with torch.no_grad():
            vin = self.v.clone()
            cold = self.cold.nonzero().squeeze(1)
            for start in range(0, cold.numel(), 8192):
                rows = cold[start:start + 8192]
                vin[rows] = self.net.content(self.content[rows])
            self.item_vectors = torch.cat([self.net.items(vin[s:s + 8192])
                                           for s in range(0, vin.shape[0], 8192)]).numpy().astype(np.float64)

    def scores(self, source: sp.csr_matrix, candidates: np.ndarray) -> np.ndarray:
        self.net.eval()
        with torch.no_grad():
            users = self.net.users(torch.from_numpy(self._user_cf(source))).numpy()
        return users.astype(np.float64) @ self.item_vectors[candidates].T
