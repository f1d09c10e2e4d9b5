"""Turning item texts into embeddings for the step: tokenize once, pad per chunk on the device, replay dropout.

The reference implementation tokenizes its whole catalog once per run, padded to one width (the
longest text, capped at max_seq_length), and encodes each step's items in catalog order; on
short-text data most of its compute is spent on padding. Here the training catalog is tokenized
once too (flat id array + offsets), but each chunk is padded only to its own longest text, with
chunks formed from texts of similar length.

On a GPU nothing inside the chunk loops waits for the host: the catalog's token ids and offsets are
uploaded to the training device once per worker (`DeviceCatalog`), a step uploads its chunk plan in
one asynchronous copy (`ChunkPlan`), and every chunk is gathered, padded and masked on the device
from those tensors; pass 2 reuses pass 1's plan. Chunk widths come from the host copy of the
lengths, so no size is ever read back from the device.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from beeray.errors import BeerayError
from beeray.models import embedding_dim, encode_prompt
from beeray.precision import autocast

try:  # sentence-transformers >= 6
    from sentence_transformers.base.losses.gradcache import RandContext
except ImportError:  # pragma: no cover - older sentence-transformers
    from sentence_transformers.losses.CachedMultipleNegativesRankingLoss import RandContext


@dataclass(frozen=True)
class TokenizedCatalog:
    """Token ids of the training catalog's texts, truncated to max_seq_length, stored flat.

    Row r holds the text of item `items[r]` (an index into the prepared data's items). The
    training catalog is exactly the items of the interaction file a run trains on (docs/method.md
    §2.1), so validation and test cold items are never tokenized here; the step and the sampler
    only ever see row numbers of this catalog.
    """

    ids: np.ndarray  # int32, all rows' token ids concatenated
    offsets: np.ndarray  # int64, row r is ids[offsets[r]:offsets[r+1]]
    items: np.ndarray  # int64, sorted: the prepared-data item index of each row
    pad_id: int
    pad_left: bool
    # DeviceCatalog per device, made on first use: a worker uploads its catalog once, not per step.
    _on: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return self.offsets.size - 1

    def rows(self, items: np.ndarray) -> np.ndarray:
        """Catalog rows of prepared-data item indices; an item outside the catalog is an error."""
        items = np.asarray(items, dtype=np.int64)
        rows = np.searchsorted(self.items, items)
        found = rows < self.items.size
        found[found] = self.items[rows[found]] == items[found]
        if not found.all():
            missing = items[~found][:5].tolist()
            raise ValueError(f"items {missing} are not in the training catalog ({self.items.size} items)")
        return rows

    @classmethod
    def build(cls, model, texts: list[str], max_seq_length: int, items: np.ndarray | None = None,
              batch: int = 2048, show_progress: bool = False) -> "TokenizedCatalog":
        """Tokenize `texts`; `items` names the prepared-data item of each text (default: 0..n-1).

        Each text is tokenized as model.encode would tokenize it: after the model's default prompt
        (beeray.models.set_prompt, TrainConfig.prompt), so training sees what evaluation encodes.
        """
        from tqdm.auto import tqdm

        items = np.arange(len(texts), dtype=np.int64) if items is None else np.asarray(items, dtype=np.int64)
        if items.size != len(texts) or (items.size > 1 and not (np.diff(items) > 0).all()):
            raise ValueError("items must be strictly increasing, one per text")
        tok = model.tokenizer
        prompt = encode_prompt(model)
        # Each batch becomes int32 arrays at once: Python lists of 44 M token ids (10^6 items) would
        # take 3.3 GB where the arrays take 176 MB.
        ids_parts: list[np.ndarray] = []
        len_parts: list[np.ndarray] = []
        starts = range(0, len(texts), batch)
        for s in tqdm(starts, desc="tokenize", disable=not show_progress, unit="batch"):
            enc = tok([prompt + t for t in texts[s:s + batch]], truncation=True, max_length=max_seq_length,
                      padding=False, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            len_parts.append(np.fromiter(map(len, enc), dtype=np.int64, count=len(enc)))
            ids_parts.append(np.fromiter((t for p in enc for t in p), dtype=np.int32, count=int(len_parts[-1].sum())))
        lengths = np.concatenate(len_parts) if len_parts else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
        return cls(ids=ids, offsets=offsets, items=items, pad_id=int(tok.pad_token_id or 0),
                   pad_left=getattr(tok, "padding_side", "right") == "left")

    @classmethod
    def cached(cls, model, data, max_seq_length: int, full: bool = False,
               show_progress: bool = False) -> "TokenizedCatalog":
        """The training catalog of `data` (train or train_full), tokenized once and memory-mapped.

        Stored under `<prepared folder>/tokens/<key>/`, the key naming the prepared set, its training
        file, the tokenizer (a digest of its full definition), the prompt and max_seq_length. The first caller
        tokenizes and writes it atomically (the driver, before any worker starts); every worker,
        restart and later run with the same key maps the files instead of tokenizing again.
        """
        train_file = data.train_path(full)
        st = train_file.stat()
        prompt = encode_prompt(model)
        key = hashlib.sha256(json.dumps({
            "data": data.stats.get("fingerprint"), "file": train_file.name, "size": st.st_size,
            "mtime_ns": st.st_mtime_ns, "tokenizer": tokenizer_digest(model.tokenizer),
            "max_seq_length": int(max_seq_length), "format": 1,
            # only when set: the catalogs tokenized before prompts existed keep their key
            **({"prompt": prompt} if prompt else {})}, sort_keys=True).encode()).hexdigest()[:16]
        folder = Path(data.root) / TOKENS_DIR / key
        if not (folder / "meta.json").is_file():
            items = data.train_items(full)
            catalog = cls.build(model, data.train_texts(items), max_seq_length, items=items,
                                show_progress=show_progress)
            catalog.save(folder)
        return cls.load(folder)

    def save(self, folder: Path) -> None:
        """Write the arrays as .npy files into `folder` atomically; a folder already there is kept (a
        concurrent writer got there first with the same content)."""
        from beeray.files import staged_dir

        folder = Path(folder)
        with staged_dir(folder, keep_existing=(folder / "meta.json").is_file) as tmp:
            for name in ("ids", "offsets", "items"):
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(getattr(self, name)))
            (tmp / "meta.json").write_text(json.dumps({"pad_id": self.pad_id, "pad_left": self.pad_left,
                                                       "rows": len(self), "tokens": int(self.offsets[-1])}))

    @classmethod
    def load(cls, folder: Path) -> "TokenizedCatalog":
        """Map a saved catalog (read-only; pages are read as steps touch them)."""
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("ids", "offsets", "items")}
        if arrays["offsets"].size != meta["rows"] + 1 or arrays["ids"].size != meta["tokens"]:
            raise BeerayError(f"{folder}: tokenized catalog is incomplete; delete the folder to rebuild it")
        return cls(pad_id=int(meta["pad_id"]), pad_left=bool(meta["pad_left"]), **arrays)

    def on(self, device: torch.device | str) -> "DeviceCatalog":
        """This catalog's token ids and offsets on `device`, uploaded on the first call only."""
        device = torch.device(device)
        if device not in self._on:
            self._on[device] = DeviceCatalog(self, upload(self.ids, device), upload(self.offsets, device))
        return self._on[device]


@dataclass(frozen=True)
class DeviceCatalog:
    """A TokenizedCatalog's arrays on the training device: every chunk is built there.

    `ids` stay int32 (4 bytes a token: 176 MB for 10^6 Goodbooks-length texts); `offsets` are int64,
    8 bytes an item, so that index arithmetic never overflows.
    """

    host: TokenizedCatalog
    ids: torch.Tensor  # int32, flat
    offsets: torch.Tensor  # int64, n_rows + 1

    def features(self, rows: torch.Tensor, width: int) -> dict:
        """input_ids/attention_mask of catalog `rows` (a device tensor), padded to `width` tokens.

        `width` must be the longest of the rows' lengths, known on the host (ChunkPlan.widths):
        reading it from the device would make the host wait for the GPU.
        """
        start = self.offsets[rows]
        length = self.offsets[rows + 1] - start
        col = torch.arange(width, device=rows.device)
        if self.host.pad_left:
            col = col - (width - length)[:, None]  # token position within the text; < 0 is padding
        mask = (col >= 0) & (col < length[:, None])
        index = (start[:, None] + col).clamp_(0, max(self.ids.numel() - 1, 0))
        input_ids = torch.where(mask, self.ids[index].long(), self.host.pad_id)
        return {"input_ids": input_ids, "attention_mask": mask.long()}


def upload(array: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A host array as a tensor on `device` without a host synchronisation.

    On CUDA it goes through pinned memory with an asynchronous copy (a copy from pageable memory
    blocks the host until the GPU has drained); on the CPU the tensor shares the array's memory.
    """
    device = torch.device(device)
    array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        # Memory-mapped catalog arrays are read-only; nothing here ever writes to the tensor.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(array)
    if device.type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


@dataclass(frozen=True)
class ChunkPlan:
    """How one step encodes `items` (catalog rows): chunks of similar-length texts.

    `positions[i]` are chunk i's positions into `items` (host), `widths[i]` its longest text, and
    `rows[i]` / `index[i]` the same chunk's catalog rows and positions on the device, from one
    upload per step. Pass 1 and pass 2 both walk this one plan.
    """

    positions: list[np.ndarray]
    widths: list[int]
    rows: list[torch.Tensor]
    index: list[torch.Tensor]
    size: int  # len(items)

    @classmethod
    def build(cls, catalog: TokenizedCatalog, items: np.ndarray, chunk_size: int,
              device: torch.device | str) -> "ChunkPlan":
        positions = plan_chunks(items, catalog.lengths, chunk_size)
        widths = [int(catalog.lengths[items[pos]].max()) for pos in positions]
        order = np.concatenate(positions) if positions else np.zeros(0, np.int64)
        packed = upload(np.stack([items[order], order]).astype(np.int64), device)
        sizes = [pos.size for pos in positions]
        return cls(positions=positions, widths=widths, rows=list(packed[0].split(sizes)),
                   index=list(packed[1].split(sizes)), size=int(items.size))

    def __len__(self) -> int:
        return len(self.positions)


TOKENS_DIR = "tokens"  # the tokenized training catalogs inside a prepared folder


def tokenizer_digest(tokenizer) -> str:
    """A digest of everything that decides token ids: the fast tokenizer's full JSON definition
    (vocabulary, normalizer, pre-tokenizer, post-processor), else the vocabulary, plus padding."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    blob += f"|{type(tokenizer).__name__}|{tokenizer.padding_side}|{tokenizer.pad_token_id}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_chunks(items: np.ndarray, lengths: np.ndarray, chunk_size: int) -> list[np.ndarray]:
    """Split `items` into chunks of at most chunk_size texts of similar token length.

    Returns positions into `items` (not item ids), so callers can scatter results back.
    """
    order = np.argsort(lengths[items], kind="stable")
    return [order[s:s + chunk_size] for s in range(0, order.size, chunk_size)]


def encode(model, features: dict, precision: str) -> torch.Tensor:
    with autocast(features["input_ids"].device, precision):
        out = model(dict(features))["sentence_embedding"]
    return out.float()


def activation_bytes(model, width: int, texts: int, precision: str) -> int:
    """Estimated memory of one chunk's autograd graph: `texts` texts padded to `width` tokens.

    Per transformer layer and text, Korthikanti et al. (2022, "Reducing Activation Recomputation
    in Large Transformer Models", §4.1) count s·h·(34 + 5·a·s/h) bytes with 16-bit activations
    (s tokens, h hidden size, a heads); float32 activations take about twice that. An estimate:
    it sizes the kept graphs under `activation_memory`, it does not police the allocator.
    """
    cfg = getattr(getattr(model[0], "auto_model", None), "config", None)
    try:
        h, a, layers = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers
    except AttributeError:
        raise BeerayError("activation_memory needs a Transformer encoder whose config gives hidden_size, "
                          "num_attention_heads and num_hidden_layers; set activation_memory: 0") from None
    per_text = layers * width * h * (34 + 5 * a * width / h) * (2 if precision == "fp32" else 1)
    return int(per_text * texts)


def chunks_to_keep(model, plan: ChunkPlan, budget_bytes: float, precision: str) -> int:
    """How many of the first chunks (the shortest texts) fit their graphs in `budget_bytes`."""
    used, keep = 0, 0
    for pos, width in zip(plan.positions, plan.widths):
        used += activation_bytes(model, width, pos.size, precision)
        if used > budget_bytes:
            break
        keep += 1
    return keep


def encode_pass1(model, catalog: DeviceCatalog, plan: ChunkPlan, precision: str,
                 keep: int = 0) -> tuple[torch.Tensor, list]:
    """Pass 1: embeddings of the plan's items (in their order), and per chunk what pass 2 needs.

    The first `keep` chunks are encoded with grad and keep their graph (pass 2 backprops through
    it without re-encoding: one forward less per kept chunk, paid in memory); every other chunk
    is encoded without grad and records the RNG state it started from, for the replay.
    """
    device = catalog.ids.device
    replay: list[torch.Tensor | RandContext] = []
    out = torch.empty((plan.size, embedding_dim(model)), device=device)
    for i, (rows, width, index) in enumerate(zip(plan.rows, plan.widths, plan.index)):
        feats = catalog.features(rows, width)
        if i < keep:
            emb = encode(model, feats, precision)
            replay.append(emb)
            out[index] = emb.detach()
        else:
            replay.append(RandContext(*feats.values()))
            with torch.no_grad():
                out[index] = encode(model, feats, precision)
    return out, replay


def backward_pass2(model, catalog: DeviceCatalog, plan: ChunkPlan, replay: list, grad: torch.Tensor,
                   precision: str) -> None:
    """Pass 2: backprop each chunk's slice of dL/dA, through its kept graph or by re-encoding it
    under its pass-1 RNG state (same dropout masks, so the same gradient as one big graph)."""
    for rows, width, index, state in zip(plan.rows, plan.widths, plan.index, replay):
        g = grad[index]
        if isinstance(state, torch.Tensor):
            state.backward(g)
            continue
        feats = catalog.features(rows, width)
        with state:
            emb = encode(model, feats, precision)
        emb.backward(g)
