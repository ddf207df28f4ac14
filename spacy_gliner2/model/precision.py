"""How the linear layers multiply at inference on CPU.

- :class:`OneDNNLinear` (exact mode): fp32 products through oneDNN's matmul instead of the
  BLAS library's (MKL). The same arithmetic in another summation order; oneDNN's kernels
  dispatch on the CPU's instruction sets, not its vendor (AMD EPYC, 1 thread, (1024, 768) x
  (768, 3072): 94 GFLOP/s against MKL's 68).
- :class:`BF16Linear` (fast mode, AMX / AVX512-BF16): weights stored in bf16; each product
  multiplies bf16-rounded inputs by them with fp32 accumulation (oneDNN); products come out
  rounded to bf16 (8 significant bits) and go on in fp32.

Everything else (attention, layer norms, the residual stream) stays fp32.
"""
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


def _onednn_linear() -> Optional[Callable[..., torch.Tensor]]:
    """oneDNN's (fused) linear operator of this torch build, or None."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear()


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU inference (no gradients) runs oneDNN's matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (_ONEDNN_LINEAR is not None and not torch.is_grad_enabled() and x.device.type == "cpu"
                and x.dtype == torch.float32 and self.weight.dtype == torch.float32):
            return _ONEDNN_LINEAR(x, self.weight, self.bias, "none", [], "")
        return super().forward(x)


def use_onednn_linears(module: nn.Module) -> None:
    """Make every plain ``nn.Linear`` inside ``module`` a :class:`OneDNNLinear`, in place
    (same module, same parameters: only the forward changes)."""
    for child in module.modules():
        if type(child) is nn.Linear:
            child.__class__ = OneDNNLinear


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
