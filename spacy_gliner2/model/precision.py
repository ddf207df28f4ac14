"""Fast mode on CPU: the encoder's linear layers in bfloat16 (AMX / AVX512-BF16).

Weights are stored in bf16; each product multiplies bf16-rounded inputs by them with fp32
accumulation (oneDNN); products come out rounded to bf16 (8 significant bits) and go on in
fp32. Everything else (attention, layer norms, the residual stream, the heads) stays fp32.
"""
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class BF16Linear(nn.Linear):
    """A linear layer with bf16 weights; its output has the dtype of its input."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "BF16Linear":
        """A bf16 copy of ``linear`` (no gradients: inference only)."""
        module = nn.utils.skip_init(cls, linear.in_features, linear.out_features, bias=linear.bias is not None,
                                    device=linear.weight.device, dtype=torch.bfloat16)
        with torch.no_grad():
            module.weight.copy_(linear.weight)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` on bf16-rounded ``x``, returned in ``x``'s dtype."""
        return F.linear(x.to(torch.bfloat16), self.weight, self.bias).to(x.dtype)


def use_bf16_linears(module: nn.Module) -> None:
    """Replace every ``nn.Linear`` inside ``module`` by a :class:`BF16Linear` (same parameter names)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, BF16Linear.from_linear(child))


def cpu_has_bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[bool]:
    """Whether this x86 CPU multiplies bf16 natively (AMX or AVX512-BF16); None when unknown."""
    try:
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return None
    return "amx_bf16" in flags or "avx512_bf16" in flags
