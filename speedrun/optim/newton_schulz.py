"""Newton-Schulz orthogonalisation: the expensive half of Muon, kept apart so it can be tested and timed alone.

Muon replaces an update matrix G = U S V^T by (approximately) its polar factor U V^T. It gets there without an
SVD: normalise G by its Frobenius norm (so every singular value is at most 1), then apply odd matrix polynomials
X <- a X + b (X X^T) X + c (X X^T)^2 X. Each one maps every singular value s to a s + b s^3 + c s^5 and leaves
the singular vectors alone, so the composed schedule pushes the whole spectrum towards 1.

A *schedule* is one (a, b, c) triple per iteration. Muon's default repeats (3.4445, -4.7750, 2.0315) five times:
it does not converge to 1 but, for every input singular value in [2e-3, 1] (after normalisation), lands in the
band [0.68, 1.21]; that is good enough for an optimizer and much cheaper than converging. Tuned per-iteration
schedules plug in as a list of triples, or by name (`NAMED_SCHEDULES`):

* "polar_express": Polar Express (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932, Algorithm 1): a minimax-
  optimal degree-5 polynomial per iteration for singular values in [1e-3, 1]. The paper lists eight triples
  (iterations after the eighth repeat the last one) and divides every triple but the last by a safety factor,
  (a, b, c) -> (a / 1.01, b / 1.01**3, c / 1.01**5), i.e. p(x) -> p(x / 1.01); its normalisation divides by
  1.01 * ||G||_F (+ eps) instead of ||G||_F, so bf16 rounding cannot push a singular value above the interval
  the polynomials were designed for. Five iterations map [1e-3, 1] into [0.84, 1.13]; eight converge to 1.
* "polar_express_nanogpt": the five triples the modded-nanogpt record uses since 2025-09-29 (computed there with
  Polar Express for five iterations, safety 2e-2, cushion 2), with its normalisation factor 1.02 (the record
  adds 1e-6 rather than 1e-7 to the norm: pass eps=1e-6 to match it exactly).

`norm_scale` (1.0 for plain triples, the factor above for a named schedule; see `ns_norm_scale`) multiplies the
Frobenius norm in the normalisation: X_0 = G / (norm_scale * ||G||_F + eps).

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
from dataclasses import dataclass

import torch

from speedrun.errors import SpeedrunError

Coefficients = tuple[float, float, float]

DEFAULT_COEFFICIENTS: Coefficients = (3.4445, -4.7750, 2.0315)
DEFAULT_STEPS = 5
METHODS = ("auto", "plain", "gram")

# Polar Express, arXiv:2505.16932 Algorithm 1, before its safety factor (applied in `_polar_express_paper`)
_POLAR_EXPRESS_PAPER_RAW: tuple[Coefficients, ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS_SAFETY = 1.01

# modded-nanogpt's train_gpt.py since the 2025-09-29 record (safety already included in these values)
_POLAR_EXPRESS_NANOGPT: tuple[Coefficients, ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def _polar_express_paper() -> tuple[Coefficients, ...]:
    s = POLAR_EXPRESS_SAFETY
    scaled = tuple((a / s, b / s ** 3, c / s ** 5) for a, b, c in _POLAR_EXPRESS_PAPER_RAW[:-1])
    return scaled + _POLAR_EXPRESS_PAPER_RAW[-1:]


@dataclass(frozen=True)
class NamedSchedule:
    """A published schedule: its triples, whether its last triple may repeat, and its normalisation factor."""

    triples: tuple[Coefficients, ...]
    repeat_last: bool
    norm_scale: float


NAMED_SCHEDULES: dict[str, NamedSchedule] = {
    "polar_express": NamedSchedule(_polar_express_paper(), repeat_last=True, norm_scale=POLAR_EXPRESS_SAFETY),
    "polar_express_nanogpt": NamedSchedule(_POLAR_EXPRESS_NANOGPT, repeat_last=False, norm_scale=1.02),
}


def ns_schedule(coefficients: str | Coefficients | Sequence[Coefficients] = DEFAULT_COEFFICIENTS,
                steps: int | None = DEFAULT_STEPS) -> tuple[Coefficients, ...]:
    """Normalise a schedule: one (a, b, c) triple repeated `steps` times, one triple per iteration, or a name.

    With a list of triples `steps` may be None or must equal its length. With a name from `NAMED_SCHEDULES`
    the first `steps` triples of that schedule (None: all of them; "polar_express" repeats its last triple
    beyond its eight).
    """
    if isinstance(coefficients, str):
        return _named_schedule(coefficients, steps)
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


def _named_schedule(name: str, steps: int | None) -> tuple[Coefficients, ...]:
    named = NAMED_SCHEDULES.get(name)
    if named is None:
        raise SpeedrunError(f"Muon: ns_coefficients names one of {sorted(NAMED_SCHEDULES)}, got {name!r}")
    if steps is None:
        return named.triples
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SpeedrunError(f"Muon: ns_steps must be a positive integer or None, got {steps!r}")
    if steps > len(named.triples) and not named.repeat_last:
        raise SpeedrunError(f"Muon: the {name!r} schedule has {len(named.triples)} iterations, ns_steps={steps}")
    return named.triples[:steps] + named.triples[-1:] * max(0, steps - len(named.triples))


def ns_norm_scale(coefficients: str | Coefficients | Sequence[Coefficients] = DEFAULT_COEFFICIENTS) -> float:
    """The normalisation factor a schedule prescribes: its own for a named schedule, 1.0 otherwise."""
    if isinstance(coefficients, str):
        named = NAMED_SCHEDULES.get(coefficients)
        if named is None:
            raise SpeedrunError(f"Muon: ns_coefficients names one of {sorted(NAMED_SCHEDULES)}, got {coefficients!r}")
        return named.norm_scale
    return 1.0


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
                  eps: float = 1e-7, method: str = "auto", norm_scale: float = 1.0) -> torch.Tensor:
    """Approximate polar factor of each matrix in `G` ([..., rows, cols]), computed and returned in `dtype`.

    `method`: "plain", "gram" (see the module docstring) or "auto" (gram where it needs fewer flops and
    `dtype` is fp32/fp64). Each matrix is first divided by `norm_scale * ||G||_F + eps`. The input is not
    modified.
    """
    if G.ndim < 2:
        raise SpeedrunError(f"orthogonalize: needs matrices, got shape {tuple(G.shape)}")
    tall = G.size(-2) > G.size(-1)
    wide = G.mT if tall else G
    m, n = wide.shape[-2:]
    batch_shape = wide.shape[:-2]
    wide = wide.reshape(-1, m, n)
    out = torch.empty((wide.size(0), m, n), dtype=dtype, device=G.device)
    orthogonalize_into(out, [wide], schedule, eps=eps, method=method, norm_scale=norm_scale)
    out = out.reshape(*batch_shape, m, n)
    return out.mT if tall else out


def orthogonalize_into(out: torch.Tensor, pieces: Sequence[torch.Tensor], schedule: Sequence[Coefficients], *,
                       eps: float = 1e-7, method: str = "auto", norm_scale: float = 1.0) -> torch.Tensor:
    """`orthogonalize` for wide matrices (rows <= cols) given as pieces, written into `out` ([N, m, n]).

    `pieces` are [k_i, m, n] tensors of any float dtype and strides whose concatenation is the N matrices;
    they are read once, straight into the working buffers in `out.dtype` (no stacked copy first). Returns `out`.
    """
    if method not in METHODS:
        raise SpeedrunError(f"orthogonalize: method must be one of {METHODS}, got {method!r}")
    count, m, n = out.shape
    if m > n:
        raise SpeedrunError(f"orthogonalize_into: needs wide matrices (rows <= cols), got {m} x {n}")
    if sum(piece.size(0) for piece in pieces) != count:
        raise SpeedrunError(f"orthogonalize_into: pieces hold {sum(p.size(0) for p in pieces)} matrices, out {count}")
    if count == 0:
        return out
    dtype, device = out.dtype, out.device
    precise = dtype in (torch.float32, torch.float64)
    gram = method == "gram" or (method == "auto" and precise and gram_is_cheaper(m, n, len(schedule)))
    iterate = _gram_iterations if gram else _plain_iterations
    chunk = _chunk_size(count, m, n, dtype, device)
    buffers = _Buffers(chunk, m, n, dtype, device, squares=4 if gram else 2, wides=1 if gram else 2)
    starts = []
    total = 0
    for piece in pieces:
        starts.append(total)
        total += piece.size(0)
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        X = buffers.wide[0][:stop - start]
        parts = [piece[max(start, first) - first:min(stop, first + piece.size(0)) - first]
                 for piece, first in zip(pieces, starts) if first < stop and first + piece.size(0) > start]
        if len(parts) == 1:   # copy (and cast) the matrices [start, stop) into X, one kernel either way
            X.copy_(parts[0])
        else:
            torch.cat(parts, out=X)
        norms = X.norm(dim=(-2, -1), keepdim=True)
        if norm_scale != 1.0:
            norms.mul_(norm_scale)
        X.div_(norms.add_(eps))
        iterate(X, schedule, buffers, out[start:stop])
    return out


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
    (A, B), (_, Y) = buffers.take(X.size(0))   # X is the first wide buffer
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
