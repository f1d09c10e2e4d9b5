"""Which precision `amp` (and `beeray embed --precision`) picks, and that training logs it once."""

import pytest
import torch

from beeray import precision


@pytest.fixture()
def gpu(monkeypatch):
    """A pretend CUDA device of a given compute capability; torch's own bf16 test says yes, as it
    does on a T4 or V100 (bf16 emulated without tensor cores)."""
    capability = {"value": (7, 5)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Pretend GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    return capability


@pytest.mark.parametrize(("capability", "want"), [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"),
                                                  ((8, 9), "bf16"), ((9, 0), "bf16")])
def test_auto_is_bf16_only_where_the_hardware_has_it(gpu, capability, want):
    gpu["value"] = capability
    assert precision.resolve("auto", torch.device("cuda", 0)) == want
    line = precision.describe("auto", want, torch.device("cuda", 0))
    assert "Pretend GPU" in line and f"{capability[0]}.{capability[1]}" in line and "\n" not in line
    assert ("needs compute capability >= 8.0" in line) == (want == "fp32")


def test_explicit_settings_and_the_cpu(gpu):
    cuda = torch.device("cuda", 0)
    assert [precision.resolve(s, cuda) for s in ("off", "fp32", "bf16", "fp16")] == ["fp32", "fp32", "bf16", "fp16"]
    assert precision.resolve("auto", "cpu") == "fp32"
    assert precision.resolve("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="unknown precision"):
        precision.resolve("fp8", cuda)


def test_autocast_and_scaler_follow_the_precision():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with precision.autocast("cpu", name):
            assert (a @ b).dtype == dtype
        assert precision.grad_scaler("cpu", name).is_enabled() == (name == "fp16")


def test_training_logs_the_precision_once(shop, tiny_model_dir, tmp_path, capfd):
    from beeray.config import TrainConfig
    from beeray.train_loop import Recipe

    cfg = TrainConfig(data=str(shop), out=str(tmp_path), model=str(tiny_model_dir), max_seq_length=32,
                      amp="auto").validate()
    recipe = Recipe.setup(cfg, 0, 1, torch.device("cpu"))
    assert recipe.precision == "fp32" and not recipe.scaler.is_enabled()
    lines = [line for line in capfd.readouterr().out.splitlines() if line.startswith("precision:")]
    assert lines == ["precision: float32 (no autocast) (amp: auto on CPU)"]
    fp16 = Recipe.setup(TrainConfig(**{**cfg.__dict__, "amp": "fp16"}), 0, 1, torch.device("cpu"))
    assert fp16.precision == "fp16" and fp16.scaler.is_enabled()
