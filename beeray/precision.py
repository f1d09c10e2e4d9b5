"""The floating-point precision a process computes in: decided once, from a setting and the device.

Settings (TrainConfig `amp`, `beeray embed --precision`): auto | bf16 | fp16 | off (= fp32).

- auto: bf16 autocast where the GPU computes bf16 natively, i.e. compute capability >= 8.0 (A100,
  A10, L4, H100, H200 and later), else fp32. `torch.cuda.is_bf16_supported()` is not that test: by
  default it also counts *emulated* bf16, so a T4 or V100 would answer yes and then run bf16 with
  neither tensor cores nor fused attention, slower than fp32. On the CPU, auto is fp32.
- bf16 / fp16: autocast in that dtype wherever asked (the user's choice, CPU included). fp16's
  narrow exponent makes small gradients underflow, so training in fp16 scales the loss gradient
  (torch.amp.GradScaler: beeray/step.py scales dL/dA before pass 2 and unscales before the update).

Weights, the loss and dL/dA stay float32 in every mode; autocast only lowers the encoder's matmuls.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 in hardware (CUDA compute capability 8.0 or newer)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def resolve(setting: str, device: torch.device | str) -> str:
    """fp32, bf16 or fp16 for a setting (auto | bf16 | fp16 | off | fp32) on `device`."""
    if setting in ("off", "fp32"):
        return "fp32"
    if setting in DTYPES:
        return setting
    if setting != "auto":
        raise ValueError(f"unknown precision setting {setting!r}; use auto, bf16, fp16 or off")
    return "bf16" if native_bf16(device) else "fp32"


def describe(setting: str, precision: str, device: torch.device | str) -> str:
    """One log line: what runs, and why when `auto` chose it."""
    device = torch.device(device)
    what = "float32 (no autocast)" if precision == "fp32" else f"{precision} autocast"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        where = f"{torch.cuda.get_device_name(device)}, compute capability {major}.{minor}"
    else:
        where = device.type.upper()
    why = ""
    if setting == "auto":
        why = "; bf16 needs compute capability >= 8.0" if device.type == "cuda" and precision == "fp32" else ""
    return f"precision: {what} (amp: {setting} on {where}{why})"


def autocast(device: torch.device | str, precision: str):
    """The autocast context of `precision` on `device` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device | str, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16; for fp32 and bf16 a disabled scaler (scale() and step() pass through)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")
