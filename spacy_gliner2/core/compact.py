"""Compact weights: a state dict stored in int8 (matrices, one scale per row) and fp16 (the
rest), about a quarter of fp32; read back as fp32. What ships a model inside a package.

Each matrix ``W`` (2-D, floating) is stored as ``round(W / s)`` in int8 with ``s`` the
row's largest absolute value / 127 (fp16, under ``<name>::scale``), so every weight comes back
within half a step of its row. Vectors (biases, norms) and other tensors are stored in fp16.
"""
from typing import Dict

import torch

SCALE = "::scale"


def compact_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state`` in int8 (matrices) and fp16 (the rest); integer tensors are kept as they are."""
    out: Dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if SCALE in name:
            raise ValueError(f"A weight's name {name!r} contains {SCALE!r}, which compact weights reserve.")
        tensor = tensor.detach().cpu()
        if not tensor.is_floating_point():
            out[name] = tensor.contiguous()
        elif tensor.dim() == 2:
            scale = tensor.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
            scale = scale.half().float().clamp(min=torch.finfo(torch.float16).tiny)  # the scale as stored
            out[name] = torch.round(tensor.float() / scale).clamp(-127, 127).to(torch.int8).contiguous()
            out[name + SCALE] = scale.half().contiguous()
        else:
            out[name] = tensor.half().contiguous()
    return out


def expand_state(stored: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The fp32 state dict of :func:`compact_state`'s output."""
    out: Dict[str, torch.Tensor] = {}
    for name, tensor in stored.items():
        if name.endswith(SCALE):
            continue
        scale = stored.get(name + SCALE)
        if scale is not None:
            out[name] = tensor.float() * scale.float()
        elif tensor.is_floating_point():
            out[name] = tensor.float()
        else:
            out[name] = tensor
    return out
