"""The two-pass step computes exactly the gradient of plain end-to-end autograd."""

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import beeray.encoder as encoder
from beeray.encoder import ChunkPlan, DeviceCatalog, TokenizedCatalog, encode
from tests.helpers import NoReplay, autograd_grads, relative_error, two_pass_grads

WORDS = "printer toner cable paper tent lamp stove boots sock jacket lens tripod camera bag strap".split()


def make_texts(n, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(2, 14))) for _ in range(n)]


@pytest.fixture()
def setup(tiny_model_dir):
    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    texts = make_texts(40)
    catalog = TokenizedCatalog.build(model, texts, max_seq_length=32)
    rng = np.random.default_rng(0)
    users = [rng.choice(40, size=rng.integers(1, 5), replace=False) for _ in range(6)]
    return model, catalog, users


@pytest.mark.parametrize("chunk_size", [1, 5, 16, 64])
def test_two_pass_equals_autograd_with_dropout(setup, chunk_size):
    model, catalog, users = setup
    assert model[0].auto_model.config.hidden_dropout_prob > 0
    ref, ref_loss = autograd_grads(model, catalog, users, 24, (1, 0, 3), chunk_size, seed=7)
    got, res = two_pass_grads(model, catalog, users, 24, (1, 0, 3), chunk_size, seed=7)
    assert res.loss == pytest.approx(ref_loss, rel=1e-6)
    assert res.items == 24 and res.users == len(users)
    # float32 through a 2-layer encoder: the two computations differ by round-off only
    assert relative_error(got, ref) < 1e-5
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6 * g.abs().max().item(), msg=name)


def test_without_rng_replay_gradients_differ(setup, monkeypatch):
    """The control: dropout without replay gives a different (wrong) gradient."""
    model, catalog, users = setup
    monkeypatch.setattr(encoder, "RandContext", NoReplay)
    ref, _ = autograd_grads(model, catalog, users, 24, (1, 0, 3), 8, seed=7)
    got, _ = two_pass_grads(model, catalog, users, 24, (1, 0, 3), 8, seed=7)
    assert relative_error(got, ref) > 1e-2


def budget_for(model, catalog, users, m, key, chunk_size, n_chunks):
    """An activation budget that keeps exactly the first `n_chunks` chunks of this step's I_b."""
    from beeray.sampler import sample_item_set, step_rng

    items = sample_item_set(np.unique(np.concatenate(users)), len(catalog), m, step_rng(*key))
    chunks = encoder.plan_chunks(items, catalog.lengths, chunk_size)
    sizes = [encoder.activation_bytes(model, int(catalog.lengths[items[p]].max()), p.size, "fp32") for p in chunks]
    assert n_chunks < len(chunks)
    budget = sum(sizes[:n_chunks]) + sizes[n_chunks] // 2
    plan = ChunkPlan.build(catalog, items, chunk_size, "cpu")
    assert encoder.chunks_to_keep(model, plan, budget, "fp32") == n_chunks
    return budget


@pytest.mark.parametrize("kept", ["some", "all"])
def test_kept_graphs_give_the_same_gradient_with_fewer_encodes(setup, monkeypatch, kept):
    """Under an activation budget the first chunks keep their pass-1 graph: the gradient still
    equals autograd's, and those chunks are not encoded a second time."""
    model, catalog, users = setup
    chunk = 5  # 24 items -> 5 chunks
    budget = budget_for(model, catalog, users, 24, (1, 0, 3), chunk, 2) if kept == "some" else 1e15
    calls = []
    real = DeviceCatalog.features
    monkeypatch.setattr(DeviceCatalog, "features", lambda self, rows, width: calls.append(rows.numel())
                        or real(self, rows, width))
    ref, ref_loss = autograd_grads(model, catalog, users, 24, (1, 0, 3), chunk, seed=7)
    calls.clear()
    got, res = two_pass_grads(model, catalog, users, 24, (1, 0, 3), chunk, seed=7, activation_memory=budget)
    assert res.loss == pytest.approx(ref_loss, rel=1e-6)
    assert relative_error(got, ref) < 1e-5
    re_encoded = 24 - 10 if kept == "some" else 0  # the first two chunks hold 5 + 5 texts
    assert sum(calls) == 24 + re_encoded


def test_kept_graphs_need_no_replay_but_the_rest_still_does(setup, monkeypatch):
    """Control: without the RNG replay, keeping every graph stays exact; keeping some does not."""
    model, catalog, users = setup
    monkeypatch.setattr(encoder, "RandContext", NoReplay)
    ref, _ = autograd_grads(model, catalog, users, 24, (1, 0, 3), 5, seed=7)
    all_kept, _ = two_pass_grads(model, catalog, users, 24, (1, 0, 3), 5, seed=7, activation_memory=1e15)
    assert relative_error(all_kept, ref) < 1e-5
    budget = budget_for(model, catalog, users, 24, (1, 0, 3), 5, 2)
    some, _ = two_pass_grads(model, catalog, users, 24, (1, 0, 3), 5, seed=7, activation_memory=budget)
    assert relative_error(some, ref) > 1e-2


def test_activation_estimate_grows_with_width_and_halves_under_bf16(setup):
    model, _, _ = setup
    one = encoder.activation_bytes(model, 16, 1, "fp32")
    assert encoder.activation_bytes(model, 16, 10, "fp32") == pytest.approx(10 * one, rel=1e-9)
    for half in ("bf16", "fp16"):
        assert encoder.activation_bytes(model, 16, 1, half) == pytest.approx(one / 2, rel=1e-6)
    assert encoder.activation_bytes(model, 32, 1, "fp32") > 2 * one  # attention scores grow as s^2


def test_loss_and_grads_do_not_depend_on_catalog_beyond_item_set(setup):
    """Appending 500 unrelated items to the catalog changes nothing when I_b is the same.

    m=1 is below the number of positives, so I_b is exactly the positives in both catalogs.
    """
    model, catalog, users = setup
    big = TokenizedCatalog.build(model, make_texts(40) + make_texts(500, seed=9), max_seq_length=32)
    small_g, small = two_pass_grads(model, catalog, users, 1, (0, 0, 0), 8, seed=3)
    big_g, big_res = two_pass_grads(model, big, users, 1, (0, 0, 0), 8, seed=3)
    assert small.items == big_res.items == np.unique(np.concatenate(users)).size
    assert big_res.loss == pytest.approx(small.loss, rel=1e-6)
    assert relative_error(big_g, small_g) < 1e-6


def test_catalog_features_match_sentence_transformers_encode(setup):
    """Pre-tokenized, length-bucketed chunks give the embeddings model.encode gives."""
    model, catalog, _ = setup
    model.eval()
    texts = make_texts(40)
    items = np.arange(40)
    on_cpu = catalog.on("cpu")
    with torch.no_grad():
        ours = torch.cat([encode(model, on_cpu.features(torch.from_numpy(items[pos]),
                                                        int(catalog.lengths[items[pos]].max())), "fp32")
                          for pos in [np.arange(0, 20), np.arange(20, 40)]])
    model.max_seq_length = 32
    ref = model.encode(texts, convert_to_tensor=True, batch_size=7)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_catalog_features_equal_the_tokenizers_own_padding(setup, side):
    """Any subset of rows, in any order, padded to its longest text on either side, is what the
    tokenizer itself gives for those texts with padding=True."""
    model, _, _ = setup
    texts = make_texts(60, seed=4)
    tok = model.tokenizer
    old_side = tok.padding_side
    tok.padding_side = side
    try:
        catalog = TokenizedCatalog.build(model, texts, max_seq_length=16)
        rows = np.random.default_rng(1).permutation(60)[:23]
        ours = catalog.on("cpu").features(torch.from_numpy(rows), int(catalog.lengths[rows].max()))
        ref = tok([texts[r] for r in rows], truncation=True, max_length=16, padding=True, return_tensors="pt")
    finally:
        tok.padding_side = old_side
    assert catalog.pad_left == (side == "left")
    torch.testing.assert_close(ours["input_ids"], ref["input_ids"], rtol=0, atol=0)
    torch.testing.assert_close(ours["attention_mask"], ref["attention_mask"], rtol=0, atol=0)


def test_attention_dropout_switch_keeps_hidden_dropout(tiny_model_dir):
    from beeray.models import set_attention_dropout

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    assert set_attention_dropout(model, 0.0) == 2  # one per layer of the tiny BERT
    drops = {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert all(p == 0.0 for n, p in drops.items() if n.endswith("attention.self.dropout"))
    assert any(p == 0.1 for n, p in drops.items() if not n.endswith("attention.self.dropout"))


# ---------------------------------------------------------------- chunks built on the device

def host_features(catalog: TokenizedCatalog, items: np.ndarray) -> dict:
    """The features as beeray built them on the host before they moved to the device (the row loop
    of NumPy slice copies): the device gather must give these bit for bit."""
    lens = catalog.lengths[items]
    width = int(lens.max())
    input_ids = np.full((items.size, width), catalog.pad_id, dtype=np.int64)
    mask = np.zeros((items.size, width), dtype=np.int64)
    for row, (item, n) in enumerate(zip(items, lens)):
        cols = slice(width - n, width) if catalog.pad_left else slice(0, n)
        input_ids[row, cols] = catalog.ids[catalog.offsets[item]:catalog.offsets[item] + n]
        mask[row, cols] = 1
    return {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask)}


@pytest.mark.parametrize("side", ["right", "left"])
def test_device_features_equal_the_host_padding_bit_for_bit(setup, side):
    model, _, _ = setup
    texts = make_texts(300, seed=5)
    old_side = model.tokenizer.padding_side
    model.tokenizer.padding_side = side
    try:
        catalog = TokenizedCatalog.build(model, texts, max_seq_length=12)  # some texts truncated
    finally:
        model.tokenizer.padding_side = old_side
    rng = np.random.default_rng(2)
    items = rng.permutation(300)[:97]
    plan = ChunkPlan.build(catalog, items, 16, "cpu")
    on_cpu = catalog.on("cpu")
    assert catalog.on("cpu") is on_cpu  # uploaded once per device
    for pos, rows, width, index in zip(plan.positions, plan.rows, plan.widths, plan.index):
        assert torch.equal(index, torch.from_numpy(pos)) and torch.equal(rows, torch.from_numpy(items[pos]))
        ours, want = on_cpu.features(rows, width), host_features(catalog, items[pos])
        for key in ("input_ids", "attention_mask"):
            assert ours[key].dtype == want[key].dtype == torch.int64
            assert torch.equal(ours[key], want[key]), key


def test_a_step_uploads_its_indices_once_whatever_the_chunk_count(setup, monkeypatch):
    """Host -> device copies per step do not grow with the number of chunks: the catalog goes up once
    per device, the chunk plan, the workers' slices and the targets once per step. Pass 2 walks pass
    1's plan (the same device index tensors), it does not rebuild them."""
    model, catalog, users = setup
    catalog = TokenizedCatalog.build(model, make_texts(40), max_seq_length=32)  # nothing uploaded yet
    uploads, passes = [], []
    real_upload, real_p1, real_p2 = encoder.upload, encoder.encode_pass1, encoder.backward_pass2
    monkeypatch.setattr(encoder, "upload", lambda a, d: uploads.append(np.shape(a)) or real_upload(a, d))
    import beeray.step as step_mod

    monkeypatch.setattr(step_mod, "upload", encoder.upload)
    monkeypatch.setattr(step_mod, "encode_pass1", lambda m, c, plan, *a, **k: passes.append(plan) or real_p1(m, c, plan, *a, **k))
    monkeypatch.setattr(step_mod, "backward_pass2", lambda m, c, plan, *a, **k: passes.append(plan) or real_p2(m, c, plan, *a, **k))
    counts = {}
    for chunk in (1, 24):
        uploads.clear()
        passes.clear()
        two_pass_grads(model, catalog, users, 24, (1, 0, 3), chunk, seed=7)
        counts[chunk] = len(uploads)
        assert len(passes) == 2 and passes[0] is passes[1]
        assert len(passes[0]) == (24 if chunk == 1 else 1)
    assert counts[1] == 3 + 2  # catalog ids + offsets (first step), then plan, slices, targets
    assert counts[24] == 3  # the same step with 1 chunk instead of 24: the catalog is already there


# ---------------------------------------------------------------- precision

TOLERANCE = {"fp32": 1e-5, "bf16": 2e-3, "fp16": 2e-3}  # relative L2 error of the whole gradient


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_two_pass_equals_autograd_under_autocast(setup, precision):
    """bf16 and fp16 (with its loss scaling applied to G before pass 2) stay exact: the two-pass
    gradient equals one-graph autograd at the same precision, and the replay control still fails."""
    model, catalog, users = setup
    ref, ref_loss = autograd_grads(model, catalog, users, 24, (1, 0, 3), 5, seed=7, precision=precision)
    got, res = two_pass_grads(model, catalog, users, 24, (1, 0, 3), 5, seed=7, precision=precision)
    fp32, _ = autograd_grads(model, catalog, users, 24, (1, 0, 3), 5, seed=7)
    assert res.loss == pytest.approx(ref_loss, rel=1e-4)
    assert relative_error(got, ref) < TOLERANCE[precision]
    assert relative_error(ref, fp32) > 10 * relative_error(got, ref)  # autocast really ran in half precision


def test_fp16_step_scales_dL_dA_and_unscales_before_the_update(setup):
    """The scaled G reaches pass 2 (gradients are scale x larger there) and the optimizer sees the
    unscaled gradient; without a scaler fp16 is refused."""
    from beeray.testing.gradcheck import FP16_SCALE, scaler_for

    model, catalog, users = setup
    seen = []
    real = encoder.backward_pass2

    def spy(m, c, plan, replay, grad, precision):
        seen.append(grad.detach().clone())
        return real(m, c, plan, replay, grad, precision)

    import beeray.step as step_mod

    step_mod_backward = step_mod.backward_pass2
    step_mod.backward_pass2 = spy
    try:
        got16, _ = two_pass_grads(model, catalog, users, 24, (1, 0, 3), 5, seed=7, precision="fp16")
        got32, _ = two_pass_grads(model, catalog, users, 24, (1, 0, 3), 5, seed=7)
    finally:
        step_mod.backward_pass2 = step_mod_backward
    g16, g32 = seen
    assert torch.allclose(g16, g32 * FP16_SCALE, rtol=1e-2, atol=1e-3 * float(g16.abs().max()))
    assert relative_error(got16, got32) < 2e-2  # unscaled before the update: fp16 round-off only
    with pytest.raises(ValueError, match="GradScaler"):
        two_pass_grads(model, catalog, users, 24, (1, 0, 3), 5, seed=7, precision="fp16", scaler=None)
    assert scaler_for("cpu", "fp16").get_scale() == FP16_SCALE
