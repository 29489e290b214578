"""Newton-Schulz orthogonalisation: the expensive half of Muon, kept apart so it can be tested and timed alone.

Muon replaces an update matrix G = U S V^T by (approximately) its polar factor U V^T. It gets there without an
SVD: normalise G by its Frobenius norm (so every singular value is at most 1), then apply odd matrix polynomials
X <- a X + b (X X^T) X + c (X X^T)^2 X. Each one maps every singular value s to a s + b s^3 + c s^5 and leaves
the singular vectors alone, so the composed schedule pushes the whole spectrum towards 1.

A *schedule* is one (a, b, c) triple per iteration. Muon's default repeats (3.4445, -4.7750, 2.0315) five times:
it does not converge to 1 but, for every input singular value in [2e-3, 1] (after normalisation), lands in the
band [0.68, 1.21]; that is good enough for an optimizer and much cheaper than converging. Tuned per-iteration
schedules (e.g. "Polar Express") plug in as a list of triples.

Two ways to compute the same polynomials, on the wide orientation (m <= n; tall inputs are transposed):

* `plain`: iterate on X itself, 4 m^2 n + 2 m^3 flops per iteration.
* `gram`: every iterate is X_k = Q_k X_0 with Q_k a polynomial in the m x m Gram matrix X_0 X_0^T, so carry
  Q_k and A_k = X_k X_k^T (both m x m, symmetric, commuting) and touch the m x n matrix only twice:
  4 m^2 n + (8K - 6) m^3 flops for K iterations. It wins when n > 1.5 m (e.g. 768 x 3072: 0.56x the flops).
  Products of m x m matrices amplify rounding more than the plain iteration, so it is used in fp32/fp64 only;
  bf16 always takes the plain path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from speedrun.errors import SpeedrunError

Coefficients = tuple[float, float, float]

DEFAULT_COEFFICIENTS: Coefficients = (3.4445, -4.7750, 2.0315)
DEFAULT_STEPS = 5
METHODS = ("auto", "plain", "gram")


def ns_schedule(coefficients: Coefficients | Sequence[Coefficients] = DEFAULT_COEFFICIENTS,
                steps: int | None = DEFAULT_STEPS) -> tuple[Coefficients, ...]:
    """Normalise a schedule: one (a, b, c) triple repeated `steps` times, or one triple per iteration.

    With a list of triples `steps` may be None or must equal its length.
    """
    values = tuple(coefficients)
    if len(values) == 3 and all(isinstance(v, (int, float)) for v in values):
        if steps is None or int(steps) < 1:
            raise SpeedrunError(f"Muon: ns_steps must be a positive integer with one (a, b, c) triple, got {steps!r}")
        return (tuple(float(v) for v in values),) * int(steps)
    try:
        schedule = tuple(tuple(float(v) for v in triple) for triple in values)
    except (TypeError, ValueError):
        raise SpeedrunError(f"Muon: ns_coefficients must be (a, b, c) or a list of such triples, got {coefficients!r}") from None
    if not schedule or any(len(t) != 3 for t in schedule):
        raise SpeedrunError(f"Muon: ns_coefficients must be (a, b, c) or a non-empty list of triples, got {coefficients!r}")
    if steps is not None and int(steps) != len(schedule):
        raise SpeedrunError(f"Muon: ns_steps={steps} but the coefficient schedule has {len(schedule)} triples")
    return schedule  # type: ignore[return-value]


def scalar_map(s: torch.Tensor, schedule: Sequence[Coefficients]) -> torch.Tensor:
    """What the schedule does to singular values of the normalised input: s -> p_K(...p_1(s))."""
    for a, b, c in schedule:
        s2 = s * s
        s = s * (a + s2 * (b + c * s2))
    return s


def gram_is_cheaper(m: int, n: int, steps: int) -> bool:
    """Flop count of the two methods for an m x n input (m <= n) and `steps` iterations."""
    m, n = min(m, n), max(m, n)
    plain = steps * (4 * m * m * n + 2 * m ** 3)
    gram = 4 * m * m * n + max(8 * steps - 6, 2) * m ** 3
    return steps >= 2 and gram < plain


def orthogonalize(G: torch.Tensor, schedule: Sequence[Coefficients], *, dtype: torch.dtype = torch.float32,
                  eps: float = 1e-7, method: str = "auto") -> torch.Tensor:
    """Approximate polar factor of each matrix in `G` ([..., rows, cols]), computed and returned in `dtype`.

    `method`: "plain", "gram" (see the module docstring) or "auto" (gram where it needs fewer flops and
    `dtype` is fp32/fp64). The input is not modified.
    """
    if G.ndim < 2:
        raise SpeedrunError(f"orthogonalize: needs matrices, got shape {tuple(G.shape)}")
    if method not in METHODS:
        raise SpeedrunError(f"orthogonalize: method must be one of {METHODS}, got {method!r}")
    tall = G.size(-2) > G.size(-1)
    wide = G.mT if tall else G
    m, n = wide.shape[-2:]
    batch_shape = wide.shape[:-2]
    wide = wide.reshape(-1, m, n)
    precise = dtype in (torch.float32, torch.float64)
    gram = method == "gram" or (method == "auto" and precise and gram_is_cheaper(m, n, len(schedule)))
    iterate = _gram_iterations if gram else _plain_iterations
    out = torch.empty((wide.size(0), m, n), dtype=dtype, device=G.device)
    chunk = _chunk_size(wide.size(0), m, n, dtype, G.device)
    buffers = _Buffers(chunk, m, n, dtype, G.device, squares=4 if gram else 2, wides=0 if gram else 1)
    for start in range(0, wide.size(0), chunk):
        X = wide[start:start + chunk].to(dtype, copy=True)
        X.div_(X.norm(dim=(-2, -1), keepdim=True).add_(eps))
        iterate(X, schedule, buffers, out[start:start + chunk])
    out = out.reshape(*batch_shape, m, n)
    return out.mT if tall else out


# On CPU, work through a stack a few matrices at a time with buffers allocated once: a whole-stack pass
# allocates hundreds of MB per iteration, and the page faults of fresh allocations cost more than batching
# saves (measured: a 48 x 768 x 768 stack spent ~15% of its time in the kernel). GPUs take the whole stack.
CPU_CHUNK_BYTES = 16 * 2 ** 20


def _chunk_size(count: int, m: int, n: int, dtype: torch.dtype, device: torch.device) -> int:
    if device.type != "cpu":
        return count
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, min(count, CPU_CHUNK_BYTES // (m * n * itemsize)))


class _Buffers:
    """Scratch matrices for one chunk, reused by every chunk of a stack (sliced for a short last chunk)."""

    def __init__(self, chunk: int, m: int, n: int, dtype: torch.dtype, device: torch.device, squares: int, wides: int):
        self.square = [torch.empty((chunk, m, m), dtype=dtype, device=device) for _ in range(squares)]
        self.wide = [torch.empty((chunk, m, n), dtype=dtype, device=device) for _ in range(wides)]

    def take(self, k: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [b[:k] for b in self.square], [b[:k] for b in self.wide]


def _plain_iterations(X: torch.Tensor, schedule: Sequence[Coefficients], buffers: _Buffers, out: torch.Tensor):
    """X <- a X + (b A + c A^2) X with A = X X^T, for each (a, b, c); the last iterate is written to `out`."""
    (A, B), (Y,) = buffers.take(X.size(0))
    last = len(schedule) - 1
    for k, (a, b, c) in enumerate(schedule):
        torch.bmm(X, X.mT, out=A)
        torch.baddbmm(A, A, A, beta=b, alpha=c, out=B)
        dest = out if k == last else Y
        torch.baddbmm(X, B, X, beta=a, out=dest)
        X, Y = dest, X


def _gram_iterations(X: torch.Tensor, schedule: Sequence[Coefficients], buffers: _Buffers, out: torch.Tensor):
    """Same polynomials as `_plain_iterations`, carried on m x m matrices: out = Q_K X_0."""
    (A, P, Q, T), _ = buffers.take(X.size(0))
    torch.bmm(X, X.mT, out=A)                       # Gram of the current iterate
    last = len(schedule) - 1
    for k, (a, b, c) in enumerate(schedule):
        torch.baddbmm(A, A, A, beta=b, alpha=c, out=P)
        P.diagonal(dim1=-2, dim2=-1).add_(a)        # P = a I + b A + c A^2
        if k == 0:
            Q.copy_(P)
        else:
            torch.bmm(P, Q, out=T)
            Q, T = T, Q
        if k < last:                                # Gram of the next iterate: P A P (P and A commute)
            torch.bmm(P, A, out=T)
            torch.bmm(T, P, out=A)
    torch.bmm(Q, X, out=out)
