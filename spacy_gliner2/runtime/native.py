"""Optional compiled kernels: DeBERTa's disentangled attention (and ModernBERT's plain and
sliding-window attention), the residual step's add and layer norm, ModernBERT's rotary
embedding, and the span scorer's logits.

``attention.c`` computes a sequence's query-key, content-to-position and position-to-content
scores of every head over cache-sized blocks (torch needs many small products and strided
copies for the same), then each row's softmax and its product with the values while the
head's scores are in cache, and writes the heads' outputs side by side. fp32 inputs (exact
mode) multiply in fp32; bf16 inputs (fast mode, where the projections come out of bf16
layers and so are bf16 values) multiply as bf16 pairs with fp32 sums (AVX512-BF16): fp32
arithmetic on those same values in another order, at bf16 speed (torch has no bf16-in,
fp32-out product on CPU). Scores, softmax and the weighted sums of values are fp32; the
output has the inputs' dtype (the next layer's). ``layer_norm.c`` adds a layer's output to the
residual stream and normalises the sum in one pass per row, also writing it in bf16 for the
next bf16 layer (fast mode). ``spans.c`` scores every span of a record against its queries
with the span's hidden layer (``ReLU(start + end)``, 4D wide) made in registers, not stored
once per width. ``rotary.c`` rotates ModernBERT's queries and keys in place in one pass.
Measured in docs/performance.md.

The kernels are built on first use with the system's C compiler (``$CC``, else ``cc``) into
a per-user cache folder (refused unless only its owner can write to it) and loaded with ctypes;
where that cannot happen (no compiler, no AVX-512, not Linux x86-64, ``SPACY_GLINER2_NATIVE=0``)
the same maths runs through torch (:mod:`.deberta`). A failed build is remembered: later
processes neither retry nor warn again (``python -m spacy_gliner2 kernels --build`` retries;
``kernels`` alone reports the state). Nothing is ever loaded from anywhere but that build.
"""
import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch

from .precision import cpu_flags

logger = logging.getLogger(__name__)
SOURCES = [Path(__file__).with_name(name) for name in ("attention.c", "layer_norm.c", "spans.c", "rotary.c")]
HEADERS = [Path(__file__).with_name("vectors.h")]  # part of the build, so of its hash
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-fopenmp", "-shared", "-fPIC"]
ENABLE_VARIABLE = "SPACY_GLINER2_NATIVE"


def cache_folder() -> Path:
    """Where built kernels live: ``$SPACY_GLINER2_CACHE``, else ``$XDG_CACHE_HOME/spacy-gliner2``
    (``~/.cache/spacy-gliner2``)."""
    if os.environ.get("SPACY_GLINER2_CACHE"):
        return Path(os.environ["SPACY_GLINER2_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spacy-gliner2"


# the instruction set each input dtype needs (the CPU flag that says so)
NEEDS = {torch.float32: "avx512f", torch.bfloat16: "avx512_bf16"}


def _unavailable_because(dtype: torch.dtype = torch.float32) -> Optional[str]:
    """Why this process cannot use the kernel on ``dtype`` inputs, or None."""
    if os.environ.get(ENABLE_VARIABLE, "1") == "0":
        return f"{ENABLE_VARIABLE}=0"
    return _machine_lacks(dtype)


@functools.lru_cache(maxsize=None)
def _machine_lacks(dtype: torch.dtype) -> Optional[str]:
    """What this machine or torch build lacks for the kernel on ``dtype`` inputs, or None
    (read once: the attention asks for every layer)."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return "it is built for Linux on x86-64 only"
    if dtype not in NEEDS:
        return f"it takes {' or '.join(map(str, NEEDS))} inputs, not {dtype}"
    if NEEDS[dtype] not in (cpu_flags() or set()):
        return f"this CPU lacks {NEEDS[dtype]}"
    if "OpenMP" not in torch.__config__.parallel_info():
        return "this torch build does not run its threads on OpenMP"
    return None


# names of builds in the cache folder, this one's and those of earlier versions of the sources
BUILD_PATTERNS = ("kernels-*.so", "kernels-*.failed", "attention-*.so", "attention_scores-*.so")
STALE_AFTER_S = 3600


class RememberedFailure(RuntimeError):
    """An earlier process failed to build these sources with this compiler: not tried again."""


def _private(folder: Path) -> Path:
    """``folder``, created if needed, refused unless this user owns it and nobody else can write
    to it (what is built there gets loaded into the process)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    stat = folder.stat()
    if stat.st_uid != os.getuid() or stat.st_mode & 0o022:
        raise PermissionError(
            f"{folder} is not private to this user (owner uid {stat.st_uid}, mode {oct(stat.st_mode & 0o777)}); "
            f"kernels are built and loaded only from a folder no one else can write to: chmod go-w it, or set "
            "SPACY_GLINER2_CACHE to another folder.")
    return folder


def _target(folder: Path) -> Tuple[str, Path]:
    """(compiler, the build's path): named by a hash of the sources, compiler and flags."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise FileNotFoundError("no C compiler found (set CC, or install gcc)")
    sources = b"".join(source.read_bytes() for source in SOURCES + HEADERS)
    digest = hashlib.sha256(sources + " ".join([compiler] + FLAGS).encode()).hexdigest()[:16]
    return compiler, folder / f"kernels-{digest}.so"


def _build(folder: Path, retry: bool = False) -> Path:
    """The kernels compiled into ``folder`` (reused when the same sources and flags built them
    before). A failed build is remembered beside it (``.failed``, with the compiler's message)
    and not tried again unless ``retry``. A new build removes the folder's other builds older
    than an hour (other sources or flags, not used by this version; younger ones may belong to a
    process of another version that is about to load what it just built; a process that loaded
    one keeps it)."""
    compiler, target = _target(folder)
    failed = target.with_suffix(".failed")
    _private(folder)
    if target.exists():
        return target
    if failed.exists() and not retry:
        raise RememberedFailure(f"an earlier build failed (its message: {failed}); "
                                "retry with: python -m spacy_gliner2 kernels --build")
    with tempfile.TemporaryDirectory(dir=folder) as scratch:
        built = Path(scratch) / target.name
        run = subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", str(built)], capture_output=True, text=True)
        if run.returncode != 0:
            failed.write_text(f"{compiler} {' '.join(FLAGS)}\n{run.stderr}")
            raise RuntimeError(f"{compiler} failed: {run.stderr.strip()[-2000:]}")
        os.replace(built, target)  # atomic: concurrent builders leave one whole file
    failed.unlink(missing_ok=True)
    for stale in {path for pattern in BUILD_PATTERNS for path in folder.glob(pattern)} - {target}:
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > STALE_AFTER_S:
                stale.unlink()
    return target


@functools.lru_cache(maxsize=None)
def _library() -> Optional[ctypes.CDLL]:
    """The built kernel library, or None (with one warning saying why when a compiler failed,
    in the process that tried; later processes only log it)."""
    try:
        library = ctypes.CDLL(str(_build(cache_folder())))
    except (FileNotFoundError, RememberedFailure) as error:  # an expected setup, or known already
        logger.info("attention and layer norms run on torch: %s", error)
        return None
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"spacy-gliner2: the compiled kernels could not be built ({error}); attention and layer "
                      f"norms run on torch instead (same results, slower). Set {ENABLE_VARIABLE}=0 "
                      "to skip the build.", RuntimeWarning, stacklevel=3)
        return None
    try:
        return _declare(library)
    except AttributeError as error:  # a build of other sources (changed under this process)
        warnings.warn(f"spacy-gliner2: the compiled kernels lack a function ({error}); attention and layer norms "
                      "run on torch instead.", RuntimeWarning, stacklevel=3)
        return None


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    """``library`` with its kernels' argument and result types declared (AttributeError for a missing one)."""
    P, L, I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    for name in ("packed_attention_fp32", "packed_attention_bf16"):
        function = getattr(library, name)
        function.argtypes = [P, P, P, L, L, I, P, I, I, P, L, L, P, L, L, ctypes.c_float, I, P, P, P, L, I]
        function.restype = I
    for name in ("add_layer_norm_fp32", "add_layer_norm_bf16"):
        function = getattr(library, name)
        function.argtypes = [P, L, P, L, I, I, P, P, ctypes.c_float, P, L, P, L, I]
        function.restype = I
    library.span_scores_fp32.argtypes = [P, P, L, I, I, P, P, P, L, L, P, L, P, I, P, L, L, I]
    library.span_scores_fp32.restype = I
    library.rotate_halves_fp32.argtypes = [P, L, L, I, I, P, L, I]
    library.rotate_halves_fp32.restype = I
    return library


def status() -> Dict[str, str]:
    """What ``python -m spacy_gliner2 kernels`` reports: whether each kind of input can use the
    kernels here, the compiler, the cache folder and the state of this version's build."""
    report = {f"{name} inputs": _unavailable_because(dtype) or "supported on this machine"
              for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    report["cache folder"] = str(cache_folder())
    try:
        compiler, target = _target(cache_folder())
    except FileNotFoundError as error:
        return {**report, "compiler": str(error), "build": "none (no compiler)"}
    report["compiler"] = compiler
    failed = target.with_suffix(".failed")
    if target.exists():
        report["build"] = f"built: {target}"
    elif failed.exists():
        report["build"] = f"failed (remembered, not retried): {failed}"
    else:
        report["build"] = "not built yet (built on first use, or with --build)"
    return report


def build_now() -> Path:
    """Build this version's kernels (again, after a remembered failure); raises on failure."""
    _library.cache_clear()
    return _build(cache_folder(), retry=True)


def kernels_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether the kernels run here on ``dtype`` inputs (builds them on the first call)."""
    return _unavailable_because(dtype) is None and _library() is not None


def _words(t: torch.Tensor, dims: Tuple[int, ...]) -> Tuple[int, ...]:
    """Strides of ``t`` along ``dims`` in 32-bit words (one fp32 value, or a pair of bf16 values)."""
    per_word = 4 // t.element_size()
    return tuple(t.stride(d) // per_word for d in dims)


def _readable_in_words(t: torch.Tensor) -> bool:
    """Whether the kernel can read ``t`` as rows of 32-bit words: a CPU tensor, 4-byte
    aligned, contiguous last dimension, and (bf16) even sizes and strides along it."""
    per_word = 4 // t.element_size()
    return (t.device.type == "cpu" and t.data_ptr() % 4 == 0 and t.stride(-1) == 1 and t.shape[-1] % per_word == 0
            and all(stride % per_word == 0 for stride in t.stride()[:-1]))


def _table(t: Optional[torch.Tensor], n: int, heads: int, dh: int, dtype: torch.dtype, name: str):
    """(pointer, head stride, row stride) of an optional ``(heads, 2n - 1, dh)`` table."""
    if t is None:
        return None, 0, 0
    if t.dtype != dtype or t.shape != (heads, 2 * n - 1, dh) or not _readable_in_words(t):
        raise ValueError(f"{name} must be a CPU {dtype} ({heads}, {2 * n - 1}, {dh}) table with contiguous rows "
                         f"(bf16: even strides, 4-byte aligned) for the longest sequence ({n} tokens), got "
                         f"{t.dtype} {tuple(t.shape)} strides {t.stride()}.")
    return (t.data_ptr(),) + _words(t, (0, 1))


def _int32s(values: Sequence[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32)


def _kernel(name: str, inputs: torch.dtype, needs: torch.dtype):
    """The kernel ``name`` for ``inputs`` (its ``_bf16`` variant for bf16, else ``_fp32``), where
    this machine runs it on ``needs``; else RuntimeError saying why."""
    if not kernels_available(needs):
        raise RuntimeError(f"the {name} kernel is not available here for {needs}: "
                           f"{_unavailable_because(needs) or 'its build failed'}.")
    return getattr(_library(), f"{name}_{'bf16' if inputs == torch.bfloat16 else 'fp32'}")


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: Sequence[int], heads: int,
                     c2p: Optional[torch.Tensor], p2c: Optional[torch.Tensor], scale: float,
                     rows: Optional[Sequence[torch.Tensor]] = None, out: Optional[torch.Tensor] = None,
                     reach: Optional[int] = None) -> torch.Tensor:
    """The attention output of sequences packed one after another, ``(m, heads * dh)``: per
    sequence and head, ``softmax_j(s_ij) v_j`` with ``s_ij = (q_i.k_j + q_i.c2p[j-i+n-1] +
    k_j.p2c[i-j+n-1]) * scale`` over its own ``n`` tokens (DeBERTa's disentangled attention;
    without tables, plain scaled dot-product attention), in the inputs' dtype; with ``reach``
    (no tables), over the keys ``|j - i| <= reach`` only (a sliding window, as ModernBERT's local layers).

    ``q``, ``k``, ``v``: ``(tokens, heads * dh)`` rows (fp32, or bf16 with an even ``dh``;
    contiguous within a row; q and k with the same strides), sequence ``s`` the ``lengths[s]``
    rows after those before it (rows past them are not read); ``c2p``, ``p2c``: ``(heads,
    2L - 1, dh)`` position tables for ``L = max(lengths)`` (a sequence of ``n`` reads their
    middle ``2n - 1`` rows), of the same dtype, or None; ``rows``: per sequence, the query rows
    to output (increasing int64 indices; None: all); ``out``: where to write (an ``(m, heads *
    dh)`` tensor with contiguous rows: each sequence's rows after the ones before), else a new
    tensor. Only where :func:`kernels_available`.
    """
    dtype = q.dtype
    kernel = _kernel("packed_attention", dtype, dtype)
    if reach is not None and (reach < 0 or c2p is not None or p2c is not None):
        raise ValueError(f"reach (a sliding window) must be >= 0 and comes without position tables, got {reach}.")
    tokens, width = q.shape
    per_word = 4 // q.element_size()
    lengths = [int(n) for n in lengths]
    if k.dtype != dtype or v.dtype != dtype or k.shape != q.shape or v.shape != q.shape or q.stride() != k.stride() \
            or width % heads or (width // heads) % per_word or not all(map(_readable_in_words, (q, k, v))):
        raise ValueError(f"q, k and v must be CPU (n, heads * dh) rows of one dtype with contiguous features, q and "
                         f"k with the same strides (bf16: even dh and strides), got {q.dtype} {tuple(q.shape)} "
                         f"{q.stride()}, {k.dtype} {tuple(k.shape)} {k.stride()} and {v.dtype} {tuple(v.shape)} "
                         f"{v.stride()} for {heads} heads.")
    if min(lengths, default=0) < 0 or sum(lengths) > tokens:
        raise ValueError(f"lengths must be token counts (>= 0) of the sequences in q's {tokens} rows, got {lengths}.")
    counts = None
    if rows is not None:
        if len(rows) != len(lengths):
            raise ValueError(f"rows must be one tensor of query rows per sequence ({len(lengths)}), got {len(rows)}.")
        for chosen, n in zip(rows, lengths):
            if chosen.dim() != 1 or chosen.device.type != "cpu" or (len(chosen) and (chosen[0] < 0 or chosen[-1] >= n)) \
                    or (chosen[1:] <= chosen[:-1]).any():
                raise ValueError(f"rows must be increasing indices of a sequence's {n} query rows, got {chosen.tolist()}.")
        counts = _int32s([len(chosen) for chosen in rows])
        rows = torch.cat([chosen.to(torch.int32) for chosen in rows]) if rows else _int32s([])
    m = sum(lengths) if counts is None else int(counts.sum())
    if out is None:
        out = torch.empty((m, width), dtype=dtype)
    elif out.dtype != dtype or out.shape != (m, width) or out.device.type != "cpu" or out.stride(-1) != 1:
        raise ValueError(f"out must be a CPU {dtype} ({m}, {width}) tensor with contiguous rows, "
                         f"got {out.dtype} {tuple(out.shape)} strides {out.stride()}.")
    if m == 0:
        return out
    dh = width // heads
    longest = max(lengths)
    tables = [x for t, name in ((c2p, "c2p"), (p2c, "p2c")) for x in _table(t, longest, heads, dh, dtype, name)]
    sizes = _int32s(lengths)  # bound: the kernel reads it
    status = kernel(q.data_ptr(), k.data_ptr(), v.data_ptr(), *_words(q, (0,)), *_words(v, (0,)), len(lengths),
                    sizes.data_ptr(), heads, dh // per_word, *tables, scale, -1 if reach is None else reach,
                    None if rows is None else rows.data_ptr(), None if counts is None else counts.data_ptr(),
                    out.data_ptr(), out.stride(0), torch.get_num_threads())
    if status != 0:
        raise MemoryError(f"the attention kernel failed (status {status}) on sequences of up to {longest} tokens.")
    return out


def rotate_halves(x: torch.Tensor, angles: torch.Tensor) -> None:
    """Rotary position embedding in place: ``x`` ``(rows, count, dh)`` fp32 (contiguous vectors;
    any row stride), ``angles`` ``(rows, dh)``: per row, ``dh / 2`` cosines then ``dh / 2`` sines.
    Each vector's halves become ``x1 cos - x2 sin`` and ``x2 cos + x1 sin`` (transformers'
    ``x * cos + rotate_half(x) * sin`` with its repeated angles). Only where :func:`kernels_available`."""
    rows, count, dh = x.shape if x.dim() == 3 else (None, None, None)
    if x.dim() != 3 or x.dtype != torch.float32 or x.device.type != "cpu" or x.stride(2) != 1 or x.stride(1) != dh \
            or dh % 2 or angles.shape != (rows, dh) or angles.dtype != torch.float32 or angles.stride(1) != 1:
        raise ValueError(f"x must be CPU fp32 (rows, count, dh) vectors (contiguous within a row, dh even) and angles "
                         f"fp32 (rows, dh) with contiguous rows, got x {x.dtype} {tuple(x.shape)} {x.stride()}, "
                         f"angles {angles.dtype} {tuple(angles.shape)} {angles.stride()}.")
    status = _kernel("rotate_halves", x.dtype, x.dtype)(x.data_ptr(), rows, x.stride(0), count, dh, angles.data_ptr(),
                                                         angles.stride(0), torch.get_num_threads())
    if status != 0:
        raise ValueError(f"the rotary kernel refused ({status}) vectors of {dh} values.")


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, norm: torch.nn.LayerNorm,
                   low: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``norm(x + residual)`` (fp32) for ``(rows, d)`` ``x`` (fp32, or bf16) and fp32 ``residual``, and
    (``low``) the same values rounded to bf16, else None. Only where :func:`kernels_available`
    (for bf16 when ``x`` is bf16 or ``low``)."""
    weight, bias = norm.weight, norm.bias
    if x.dim() != 2 or x.shape != residual.shape or x.dtype not in NEEDS or residual.dtype != torch.float32 \
            or x.device.type != "cpu" or residual.device.type != "cpu" or x.stride(-1) != 1 or residual.stride(-1) != 1 \
            or weight is None or bias is None or weight.shape != (x.shape[1],) or bias.shape != weight.shape \
            or weight.dtype != torch.float32 or bias.dtype != torch.float32 or not (weight.is_contiguous() and bias.is_contiguous()):
        raise ValueError(f"x and residual must be CPU (rows, d) rows with contiguous values (x fp32 or bf16, residual "
                         f"fp32) and the norm an fp32 affine LayerNorm over d, got x {x.dtype} {tuple(x.shape)} "
                         f"{x.stride()}, residual {residual.dtype} {tuple(residual.shape)} {residual.stride()}, norm {norm}.")
    kernel = _kernel("add_layer_norm", x.dtype, torch.bfloat16 if low else x.dtype)
    rows, d = x.shape
    out = torch.empty((rows, d), dtype=torch.float32)
    rounded = torch.empty((rows, d), dtype=torch.bfloat16) if low else None
    status = kernel(x.data_ptr(), x.stride(0), residual.data_ptr(), residual.stride(0), rows, d, weight.data_ptr(),
                    bias.data_ptr(), norm.eps, out.data_ptr(), d, None if rounded is None else rounded.data_ptr(), d,
                    torch.get_num_threads())
    if status != 0:
        raise ValueError(f"the layer norm kernel refused ({status}) rows of {d} values.")
    return out, rounded


def span_scores(starts: torch.Tensor, ends: torch.Tensor, lengths: Sequence[int], queries: torch.Tensor,
                bias: torch.Tensor, n_queries: Sequence[int], out: torch.Tensor) -> torch.Tensor:
    """Span logits written into ``out`` ``(B, Q, L, W)`` (fp32, contiguous): for record ``b``,
    ``out[b, q, i, w] = bias[b, q] + ReLU(starts[f + i] + ends[f + i + w]) . queries[b, q]``
    for ``i + w < lengths[b]`` and ``q < n_queries[b]`` (``f``: the rows of the records
    before); the other entries are left as they are.

    ``starts``, ``ends``: ``(words, C)`` fp32 rows, the records' words one after another;
    ``queries``: ``(B, Q, C)``; ``bias``: ``(B, Q)``. Only where :func:`kernels_available`.
    """
    kernel = _kernel("span_scores", torch.float32, torch.float32)
    lengths, n_queries = [int(n) for n in lengths], [int(m) for m in n_queries]
    B, Q, L, W = out.shape
    C = starts.shape[-1]
    tensors = (starts, ends, queries, bias, out)
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors) or starts.dim() != 2 \
            or ends.shape != starts.shape or starts.stride() != ends.stride() or starts.stride(1) != 1 \
            or queries.shape != (B, Q, C) or queries.stride(2) != 1 or bias.shape != (B, Q) or bias.stride(1) != 1 \
            or not out.is_contiguous():
        raise ValueError(f"span_scores takes fp32 CPU tensors: starts and ends (words, C) with the same strides and "
                         f"contiguous rows, queries (B, Q, C) and bias (B, Q) with contiguous rows, a contiguous out "
                         f"(B, Q, L, W); got {[(t.dtype, tuple(t.shape), t.stride()) for t in tensors]}.")
    if len(lengths) != B or len(n_queries) != B or not all(0 <= n <= L for n in lengths) \
            or not all(0 <= m <= Q for m in n_queries) or sum(lengths) > starts.shape[0]:
        raise ValueError(f"lengths and n_queries must give each of the {B} records its words (<= {L}, {sum(lengths)} "
                         f"<= {starts.shape[0]} rows in all) and queries (<= {Q}), got {lengths} and {n_queries}.")
    first = torch.tensor([0] + lengths[:-1], dtype=torch.int64).cumsum(0)
    sizes, counts = _int32s(lengths), _int32s(n_queries)  # bound: the kernel reads them
    if B == 0 or C == 0 or W == 0:
        return out
    status = kernel(starts.data_ptr(), ends.data_ptr(), starts.stride(0), C, B, first.data_ptr(), sizes.data_ptr(),
                    queries.data_ptr(), queries.stride(0), queries.stride(1), bias.data_ptr(), bias.stride(0),
                    counts.data_ptr(), W, out.data_ptr(), out.stride(0), out.stride(1), torch.get_num_threads())
    if status != 0:
        raise ValueError(f"the span kernel refused ({status}) these sizes.")
    return out
