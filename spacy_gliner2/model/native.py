"""An optional compiled kernel for fast mode: DeBERTa's disentangled attention scores from bf16.

In fast mode the query, key and relative-position projections come out of bf16 layers:
their values are bf16 numbers. ``attention_scores.c`` multiplies them as bf16 pairs with
fp32 sums (AVX512-BF16), which is fp32 arithmetic on those same values in another order,
about twice as fast as torch's fp32 products on this work (torch has no bf16-in, fp32-out
product on CPU). The scores, softmax and everything after stay fp32.

The kernel is built on first use with the system's C compiler (``$CC``, else ``cc``) into
a per-user cache folder and loaded with ctypes; where that cannot happen (no compiler, no
AVX512-BF16, not Linux x86-64, ``SPACY_GLINER2_NATIVE=0``) fast mode runs the same maths
through torch (:mod:`.deberta`). No code is ever loaded from anywhere but that build.
"""
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import torch

from .precision import cpu_flags

SOURCE = Path(__file__).with_name("attention_scores.c")
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512bf16", "-fopenmp", "-shared", "-fPIC"]
ENABLE_VARIABLE = "SPACY_GLINER2_NATIVE"


def cache_folder() -> Path:
    """Where built kernels live: ``$SPACY_GLINER2_CACHE``, else ``$XDG_CACHE_HOME/spacy-gliner2``
    (``~/.cache/spacy-gliner2``)."""
    if os.environ.get("SPACY_GLINER2_CACHE"):
        return Path(os.environ["SPACY_GLINER2_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spacy-gliner2"


def _unavailable_because() -> Optional[str]:
    """Why this process cannot use the kernel, or None."""
    if os.environ.get(ENABLE_VARIABLE, "1") == "0":
        return f"{ENABLE_VARIABLE}=0"
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return "it is built for Linux on x86-64 only"
    if "avx512_bf16" not in (cpu_flags() or set()):
        return "this CPU lacks AVX512-BF16"
    if "OpenMP" not in torch.__config__.parallel_info():
        return "this torch build does not run its threads on OpenMP"
    return None


def _build(folder: Path) -> Path:
    """The kernel compiled into ``folder`` (reused when the same source and flags built it before)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join([compiler] + FLAGS).encode()).hexdigest()[:16]
    target = folder / f"attention_scores-{digest}.so"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            built = Path(scratch) / target.name
            run = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built)], capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {run.stderr.strip()[-2000:]}")
            os.replace(built, target)  # atomic: concurrent builders leave one whole file
    return target


@functools.lru_cache(maxsize=None)
def _kernel() -> Optional[ctypes._CFuncPtr]:
    """The loaded kernel function, or None (with one warning saying why, when a build failed)."""
    if _unavailable_because() is not None:
        return None
    try:
        library = ctypes.CDLL(str(_build(cache_folder())))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"spacy-gliner2: fast mode's attention kernel could not be built ({error}); fast mode "
                      f"uses torch's fp32 products instead (same results, slower). Set {ENABLE_VARIABLE}=0 "
                      "to skip the build.", RuntimeWarning, stacklevel=2)
        return None
    function = library.disentangled_scores
    P, L, I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    function.argtypes = [P, P, L, I, I, I, P, L, L, P, L, L, ctypes.c_float, P, I]
    function.restype = I
    return function


def native_scores_available() -> bool:
    """Whether :func:`disentangled_scores` runs here (builds the kernel on the first call)."""
    return _kernel() is not None


def _table(t: Optional[torch.Tensor], n: int, heads: int, dh: int, name: str):
    """(pointer, head stride, row stride) of an optional ``(heads, 2n - 1, dh)`` bf16 table."""
    if t is None:
        return None, 0, 0
    if t.dtype != torch.bfloat16 or t.shape != (heads, 2 * n - 1, dh) or t.stride(2) != 1:
        raise ValueError(f"{name} must be a bf16 ({heads}, {2 * n - 1}, {dh}) table with contiguous rows, "
                         f"got {t.dtype} {tuple(t.shape)} strides {t.stride()}.")
    return t.data_ptr(), t.stride(0), t.stride(1)


def disentangled_scores(q: torch.Tensor, k: torch.Tensor, heads: int, c2p: Optional[torch.Tensor],
                        p2c: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """``(heads, n, n)`` fp32 scores ``(q_i.k_j + q_i.c2p[j-i+n-1] + k_j.p2c[i-j+n-1]) * scale`` per head.

    ``q``, ``k``: one sequence's ``(n, heads * dh)`` bf16 rows (contiguous within a row, the
    same row stride); ``c2p``, ``p2c``: ``(heads, 2n - 1, dh)`` bf16 position tables or None.
    Only where :func:`native_scores_available`.
    """
    kernel = _kernel()
    if kernel is None:
        raise RuntimeError(f"the native attention kernel is not available here: {_unavailable_because() or 'its build failed'}.")
    n, width = q.shape
    if (q.dtype, k.dtype) != (torch.bfloat16, torch.bfloat16) or k.shape != q.shape or q.stride() != k.stride() \
            or q.stride(1) != 1 or width % heads or (width // heads) % 2 or q.device.type != "cpu":
        raise ValueError(f"q and k must be CPU bf16 (n, heads * dh) rows with contiguous features, the same "
                         f"strides and an even dh, got {q.dtype} {tuple(q.shape)} {q.stride()} and {k.dtype} "
                         f"{tuple(k.shape)} {k.stride()} for {heads} heads.")
    dh = width // heads
    out = torch.empty((heads, n, n), dtype=torch.float32)
    if n == 0:
        return out
    tables = [x for t, name in ((c2p, "c2p"), (p2c, "p2c")) for x in _table(t, n, heads, dh, name)]
    status = kernel(q.data_ptr(), k.data_ptr(), q.stride(0), n, heads, dh, *tables, scale, out.data_ptr(),
                    torch.get_num_threads())
    if status != 0:
        raise MemoryError(f"the native attention kernel failed (status {status}) on a sequence of {n} tokens.")
    return out
