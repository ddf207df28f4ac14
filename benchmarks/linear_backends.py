"""GFLOP/s of one fp32 linear layer through the three CPU paths a forward can take, at encoder shapes.

    python benchmarks/linear_backends.py [--threads 2] [--rows 256,704,2048]

``F.linear`` (what ``transformers`` layers run), ``addmm`` on a pre-transposed contiguous weight,
and the oneDNN product of :mod:`spacy_gliner2.runtime.precision` (what exact mode uses). When the
three agree, an encoder forward that is bound by its linear layers cannot get faster by changing
the product: only by doing fewer multiply-adds.
"""
import argparse
import time

import torch
import torch.nn.functional as F

from spacy_gliner2.runtime.precision import use_onednn_linears

SHAPES = [(768, 768), (768, 2304), (768, 3072), (3072, 768)]  # base encoders: attention, GeGLU, FFN in/out


def seconds(fn, repeats: int = 10) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default="256,704,2048", help="token rows per product (a batch's tokens)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads; GFLOP/s")
    print(f"{'rows':>6}{'in':>6}{'out':>6}{'F.linear':>10}{'addmm':>8}{'oneDNN':>8}")
    for rows in (int(r) for r in args.rows.split(",")):
        for d_in, d_out in SHAPES:
            x = torch.randn(rows, d_in)
            layer = torch.nn.Linear(d_in, d_out)
            transposed = layer.weight.t().contiguous()
            onednn = torch.nn.Sequential(torch.nn.Linear(d_in, d_out))
            onednn[0].load_state_dict(layer.state_dict())
            use_onednn_linears(onednn)
            flops = 2 * rows * d_in * d_out / 1e9
            with torch.inference_mode():
                figures = [flops / seconds(fn) for fn in (
                    lambda: F.linear(x, layer.weight, layer.bias),
                    lambda: torch.addmm(layer.bias, x, transposed),
                    lambda: onednn(x))]
            print(f"{rows:>6}{d_in:>6}{d_out:>6}" + "".join(f"{f:>{w}.1f}" for f, w in zip(figures, (10, 8, 8))))


if __name__ == "__main__":
    main()
