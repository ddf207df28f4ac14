"""How the linear layers multiply at inference on CPU.

- :class:`OneDNNLinear` (exact mode): fp32 products through oneDNN's matmul instead of the
  BLAS library's (MKL). The same arithmetic in another summation order; oneDNN's kernels
  dispatch on the CPU's instruction sets, not its vendor (AMD EPYC, 1 thread, (1024, 768) x
  (768, 3072): 94 GFLOP/s against MKL's 68).
- :class:`BF16Linear` (fast mode, AMX / AVX512-BF16): weights stored in bf16; each product
  multiplies bf16-rounded inputs by them with fp32 accumulation (oneDNN); products come out
  rounded to bf16 (8 significant bits) and go on in fp32.

- :class:`Int8Linear` (``int8`` mode, VNNI): weights in int8 with one scale per output
  feature, inputs quantized per row at each call (one scale per token, not one per batch),
  int8 products summed in int32 (``torch._int_mm``), rescaled to fp32.

Which layers become which is the model's choice (``GLiNER2Model.use_bf16_linears`` /
``use_int8_linears``).

oneDNN builds and caches a kernel for every input row count it meets (about 0.6 MB each, up
to 1,024 of them: a long-running process with ever-new batch shapes grew by 1.9 GB over 1,200
row counts). Both layers therefore run on inputs whose rows are padded (zeros, cut from the
output) up to the next of :func:`padded_rows`' counts: multiples of ``ROW_STEP`` (16) below
1,024 rows, then ``ROWS_PER_OCTAVE`` (32) counts per doubling, which bounds the kernels to a
few per weight shape while padding wastes under 1/32 of the rows above 512 (a fixed multiple
of 64 wasted 3.6 % of the encoder's rows on the benchmark's 8 batches of 751-1,544 tokens).
The packed DeBERTa forward pads its token rows once so that its layers need no copy.
"""
import platform
from pathlib import Path
from typing import Any, Callable, Collection, Dict, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .cache import DerivedCache


def _onednn_linear() -> Optional[Callable[..., torch.Tensor]]:
    """oneDNN's (fused) linear operator of this torch build on x86-64, or None (elsewhere
    oneDNN may sit on other libraries whose speed was not measured: nn.Linear stays)."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available():
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_linear()
ROW_STEP, ROWS_PER_OCTAVE = 16, 32
INT8_CHUNK_ROWS = 256  # a power of two: a padded last chunk stays inside the padded output


def padded_rows(n: int) -> int:
    """``n`` rounded up to a multiple of its step: :data:`ROW_STEP`, or the power of two at or
    below ``n`` divided by :data:`ROWS_PER_OCTAVE` when that is larger (steps are powers of two)."""
    step = max(ROW_STEP, (1 << max(n.bit_length() - 1, 0)) // ROWS_PER_OCTAVE)
    return -(-n // step) * step


def pad_rows(x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The rows of ``x`` (all dimensions but the last) as a 2-D ``dtype`` tensor with zero rows
    appended up to :func:`padded_rows`; a view of ``x`` when nothing needs to change."""
    dtype = dtype or x.dtype
    width = x.shape[-1]
    rows = x.numel() // width if width else 0
    if x.dtype == dtype and rows == padded_rows(rows) and x.is_contiguous():
        return x.view(rows, width)
    out = x.new_empty((padded_rows(rows), width), dtype=dtype)
    out[:rows] = x.reshape(rows, width)
    out[rows:] = 0
    return out


# gelu: the exact (erf) one; oneDNN's post-op gives the bits of torch's on a contiguous tensor
ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"none": lambda x: x, "relu": F.relu, "gelu": F.gelu}


def _onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype,
                    activation: str = "none") -> torch.Tensor:
    """oneDNN's ``x @ W.T + b`` (then ``activation``, fused) over ``x`` cast to ``dtype`` with padded
    rows (output in ``dtype``)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    out = _ONEDNN_LINEAR(pad_rows(x, dtype), weight, bias, activation, [], "none" if activation == "gelu" else "")
    return out[:rows].view(*x.shape[:-1], out.shape[-1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           activation: str = "none") -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then ``activation`` (a key of :data:`ACTIVATIONS`); in fp32
    CPU inference (no gradients) through oneDNN's matmul (the weight plain, or packed by
    :func:`pack_for_onednn`), the activation fused into it."""
    if weight.is_mkldnn:
        return _onednn_product(x, weight, bias, torch.float32, activation)
    if (_ONEDNN_LINEAR is not None and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32):
        return _onednn_product(x, weight.contiguous(), bias, torch.float32, activation)
    return ACTIVATIONS[activation](F.linear(x, weight, bias))


class OneDNNLinear(nn.Linear, DerivedCache):
    """``nn.Linear`` whose fp32 CPU inference (no gradients) runs oneDNN's matmul on a copy of
    the weight packed once in oneDNN's blocked layout (:class:`~.cache.DerivedCache`: repacked when
    the weight changes); its ``activation`` (set by :func:`fuse_activations`, or given per call)
    follows, fused into it. The packed copy costs the weight's size again (DeBERTa-v3-base: 340
    MB) for 4 % less time in the encoder's products (oneDNN otherwise reorders the plain weight
    on every call)."""

    activation = "none"

    def forward(self, x: torch.Tensor, activation: Optional[str] = None) -> torch.Tensor:
        activation = activation or self.activation
        packed = self._packed_weight() if _fp32_cpu(x) else None
        if packed is not None:
            return _onednn_product(x, packed, self.bias, torch.float32, activation)
        return linear(x, self.weight, self.bias, activation)

    def gated(self, x: torch.Tensor, activation: str = "gelu") -> torch.Tensor:
        """``activation(a) * g`` for ``a, g = self(x).chunk(2, -1)`` (a gated linear unit, as
        ModernBERT's GeGLU feed-forward). Where the packed path runs: two oneDNN products, one half
        of the weight each, the activation and the product fused into them (no pass over the
        ``2 * out`` values; the same values, multiplication being commutative)."""
        halves = self._packed_halves() if _fp32_cpu(x) else None
        if halves is None:
            a, g = self(x).chunk(2, dim=-1)
            return ACTIVATIONS[activation](a) * g
        first, second, first_bias, second_bias = halves
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        padded = pad_rows(x, torch.float32)
        a = _ONEDNN_LINEAR(padded, first, first_bias, activation, [], "none" if activation == "gelu" else "")
        out = _ONEDNN_LINEAR.binary(padded, a, second, second_bias, "mul")
        return out[:rows].view(*x.shape[:-1], out.shape[-1])

    def _packs(self) -> bool:
        """Whether inference keeps packed copies of the weight: no gradients, an fp32 weight that is
        not an inference tensor (no version counter: it would be repacked on every call)."""
        weight = self.weight
        return not torch.is_grad_enabled() and weight.dtype == torch.float32 and not weight.is_inference()

    def _packed_weight(self) -> Optional[torch.Tensor]:
        """The packed fp32 weight for inference (None where :meth:`_packs` is false, or without oneDNN)."""
        weight = self.weight
        return self.derived("packed", [weight], lambda: pack_for_onednn(weight.detach().contiguous())) \
            if self._packs() else None

    def _packed_halves(self) -> Optional[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]]:
        """The two halves of the weight's rows packed, and of the bias, as :meth:`_packed_weight`."""
        weight, bias = self.weight, self.bias
        if not self._packs() or weight.shape[0] % 2:
            return None

        def build():
            half = weight.shape[0] // 2
            packed = [pack_for_onednn(w.detach().contiguous()) for w in (weight[:half], weight[half:])]
            biases = [None, None] if bias is None else [b.detach().contiguous() for b in (bias[:half], bias[half:])]
            return None if any(p is None for p in packed) else (*packed, *biases)

        return self.derived("halves", [weight] + ([] if bias is None else [bias]), build)


def _fp32_cpu(x: torch.Tensor) -> bool:
    return x.dtype == torch.float32 and x.device.type == "cpu"


def exact_gelu(module: Any) -> bool:
    """Whether ``module`` is the exact (erf) GELU: torch's ``nn.GELU()`` or transformers' ``GELUActivation``."""
    return (type(module) is nn.GELU and module.approximate == "none") or getattr(module, "act", None) is F.gelu


def use_onednn_linears(module: nn.Module) -> None:
    """Make every plain ``nn.Linear`` inside ``module`` a :class:`OneDNNLinear`, in place
    (same module, same parameters: only the forward changes)."""
    for child in module.modules():
        if type(child) is nn.Linear:
            child.__class__ = OneDNNLinear


def fuse_activations(module: nn.Module) -> None:
    """In every ``nn.Sequential`` inside ``module``, fold each ``nn.ReLU`` that follows a
    :class:`OneDNNLinear` or :class:`BF16Linear`, and each exact ``nn.GELU`` that follows a
    :class:`OneDNNLinear`, into it (oneDNN applies it to the products in registers instead of a
    pass over the output; the same values); the activation becomes an ``nn.Identity``.
    Call it on a runtime copy: it replaces modules."""
    for sequence in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequence) - 1):
            layer, after = sequence[i], sequence[i + 1]
            if not isinstance(layer, (OneDNNLinear, BF16Linear)) or layer.activation != "none":
                continue
            if type(after) is nn.ReLU or (exact_gelu(after)
                                          and isinstance(layer, OneDNNLinear)):
                layer.activation = "relu" if type(after) is nn.ReLU else "gelu"
                sequence[i + 1] = nn.Identity()


def pack_for_onednn(weight: torch.Tensor) -> Optional[torch.Tensor]:
    """``weight`` in oneDNN's own blocked layout (an opaque tensor), or None without oneDNN."""
    if _ONEDNN_LINEAR is None or weight.device.type != "cpu":
        return None
    try:
        if weight.dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return None
        return torch.ops.mkldnn._reorder_linear_weight(weight, 1024)  # the layout for ~1,024-row inputs
    except (AttributeError, RuntimeError):
        return None


class BF16Linear(nn.Module):
    """A linear layer with bf16 weights (inference only); its output has the dtype of its input.

    The weight is held once, in oneDNN's blocked layout: oneDNN would otherwise reorder a
    plain bf16 weight on every call (AMD EPYC, 1 thread, 5 labels: 9.40 against 8.81 texts/s).
    Such a module cannot be copied or pickled (nor need it be: runtime copies are rebuilt).
    """

    compute_dtype = torch.bfloat16
    activation = "none"  # "relu" when fuse_activations folds one in

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().to(torch.bfloat16)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(torch.bfloat16), requires_grad=False)
        self._packed = pack_for_onednn(weight)
        self._plain = weight if self._packed is None else None

    @property
    def weight(self) -> torch.Tensor:
        """The bf16 weight ``(out, in)`` in the plain layout (a new tensor when it is packed)."""
        return self._plain if self._packed is None else self._packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + b`` on bf16-rounded ``x`` (then its ``activation``), in ``x``'s dtype."""
        if self._packed is None:
            return ACTIVATIONS[self.activation](F.linear(x.to(torch.bfloat16), self._plain, self.bias)).to(x.dtype)
        return _onednn_product(x, self._packed, self.bias, torch.bfloat16, self.activation).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def use_bf16_linears(module: nn.Module, skip: Collection[nn.Module] = ()) -> None:
    """Replace every plain ``nn.Linear`` inside ``module`` by a :class:`BF16Linear` (same module
    names), except those in ``skip`` and those inside a module of ``skip``."""
    skipped = {id(m) for s in skip for m in s.modules()}
    _replace_linears(module, BF16Linear, lambda linear: id(linear) not in skipped)


def _replace_linears(module: nn.Module, convert: Callable[[nn.Linear], nn.Module], chosen: Callable[[nn.Linear], bool]) -> None:
    """Put ``convert(linear)`` in place of every plain ``nn.Linear`` inside ``module`` that is ``chosen``."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and chosen(child):
                setattr(parent, name, convert(child))


def _int8_rows(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 rows of the 2-D ``x`` and their fp32 scales ``(rows, 1)``: ``x ~ q * scale``."""
    scale = x.abs().amax(1, keepdim=True).float().div_(127).clamp_min_(torch.finfo(torch.float32).tiny)  # zero rows: 0 / tiny
    return (x / scale).round_().to(torch.int8), scale  # |x / scale| <= 127: no clamp


class Int8Linear(nn.Module):
    """A linear layer in int8 (inference only): ``x @ W.T + b`` from int8 ``x`` and ``W``.

    ``W`` is quantized once, one scale per output feature; ``x`` at each call, one scale
    per row, so that one large token does not coarsen every other token's grid (as
    per-tensor dynamic quantization does). Products sum exactly in int32; the result is
    rescaled to fp32. Not faithful to fp32 the way bf16 is: see README. A row holding an
    infinity comes out NaN.

    Rows go through in chunks of :data:`INT8_CHUNK_ROWS`: each chunk is quantized,
    multiplied and rescaled while it is in cache, into one output buffer, with only
    chunk-sized temporaries (fresh full-size buffers are page-faulted in on every call).
    Inference only (no gradients); its tensors are plain attributes of a CPU runtime copy.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = _int8_rows(linear.weight.detach().float())
        self.weight_t = weight.t().contiguous()  # (in, out), as torch._int_mm takes it
        self.weight_scale = scale.view(1, -1)
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features if self.in_features else 0
        flat = x.reshape(rows, self.in_features)
        out = flat.new_empty((padded_rows(rows), self.out_features), dtype=torch.float32)
        for start in range(0, rows, INT8_CHUNK_ROWS):
            q, scale = _int8_rows(flat[start : start + INT8_CHUNK_ROWS])
            n, q = q.shape[0], pad_rows(q)  # rows padded: few kernels (module docstring)
            chunk = out[start : start + q.shape[0]]
            products = torch._int_mm(q, self.weight_t, out=chunk.view(torch.int32))[:n]
            rescaled = torch.mul(products, scale, out=chunk[:n])  # over the products' own memory (exact overlap)
            if self.bias is not None:
                torch.addcmul(self.bias, rescaled, self.weight_scale, out=rescaled)
            else:
                rescaled.mul_(self.weight_scale)
        return out[:rows].to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def int8_products_available() -> bool:
    """Whether this torch build multiplies int8 matrices on CPU (``torch._int_mm``; through
    oneDNN: without it the product is a slow reference loop)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch._int_mm(torch.zeros((1, 8), dtype=torch.int8), torch.zeros((8, 8), dtype=torch.int8))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def use_int8_linears(module: nn.Module, only: Collection[nn.Module]) -> None:
    """Replace the plain ``nn.Linear`` modules of ``only`` inside ``module`` by :class:`Int8Linear`."""
    chosen = {id(m) for m in only}
    _replace_linears(module, Int8Linear, lambda linear: id(linear) in chosen)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[Set[str]]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); None when unknown."""
    try:
        return set(next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return None


def cpu_has_bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> Optional[bool]:
    """Whether this x86 CPU multiplies bf16 natively (AMX or AVX512-BF16); None when unknown."""
    flags = cpu_flags(cpuinfo)
    return None if flags is None else bool(flags & {"amx_bf16", "avx512_bf16"})
