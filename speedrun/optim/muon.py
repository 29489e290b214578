"""Muon: momentum, then orthogonalise each matrix update, for single-device and data-parallel training.

Which matrices: a 2-D parameter [rows, cols] is one matrix. A 3-D parameter [n, rows, cols] is a bank of n
matrices (e.g. every layer's QKV weights in one [layers, 3*dim, dim] tensor), each orthogonalised, scaled and
normalised on its own, exactly as if they were n separate 2-D parameters. A parameter of 4 or more dimensions
is a convolution kernel [out, in, kh, kw, ...] and is viewed as the one matrix [out, in*kh*kw*...]: that is the
linear map the kernel applies to each unfolded input patch (im2col), so orthogonalising it is Muon's rule for
that layer (Keller Jordan's CIFAR-10 speedruns treat conv weights this way). To give Muon a bank of stacked
kernels or a 4-D bank of matrices, reshape it to 3-D [n, rows, cols] yourself. Every shape rule below (the
orientation, `adjust_lr_fn`, NorMuon's rows) uses each matrix's own (rows, cols).

Per parameter with a gradient g, for each of its matrices:

    buf <- momentum * buf + (1 - momentum) * g                 (an EMA; the scale is irrelevant after the norm)
    u   <- (1 - momentum) * g + momentum * buf   if nesterov, else buf
    O   <- orthogonalize(u)                                    (Newton-Schulz, see `newton_schulz.py`)
    O   <- normuon(O)                                          (only with `normuon_beta2`, see below)
    p   <- p - lr * weight_decay * p            (on every coordinate; with `cautious_wd` only where O * p >= 0)
    p   <- p - lr * scale(rows, cols) * O

`adjust_lr_fn` picks `scale`: "original" = max(1, rows/cols) ** 0.5 (Keller Jordan's Muon), "match_rms_adamw" =
0.2 * max(rows, cols) ** 0.5 (update RMS close to AdamW's, so AdamW learning rates and weight decay carry over),
or any callable (rows, cols) -> float. The names follow `torch.optim.Muon`.

Options, all off by default (with them off, fp32 parameters get bit for bit the numbers they got before the
options existed):

* `ns_coefficients="polar_express"` (or "polar_express_nanogpt"): a named per-iteration schedule, which also sets
  the normalisation factor it prescribes (`ns_norm_scale`, 1.01 / 1.02; see `newton_schulz.py`). `ns_steps`
  then picks how many of its iterations run (default 5).
* `normuon_beta2=0.95` (NorMuon, Li et al. 2025, arXiv:2510.05491): per-neuron second-moment normalisation of
  the orthogonalised update. For each matrix, v <- beta2 * v + (1 - beta2) * mean(O**2 over each row) (state
  `normuon_buffer`, fp32, [matrices, rows, 1]); O' = O / (sqrt(v) + 1e-8), one factor per row; then O' is
  rescaled to O's Frobenius norm, so the update's overall RMS (and `adjust_lr_fn`'s meaning) is unchanged and
  only its distribution over rows changes. (The paper rescales to RMS 0.2 instead: that is "match_rms_adamw"
  up to how far O is from exactly orthogonal.) No bias correction: with the norm restored it would cancel.
  `normuon_axis="cols"` keeps one statistic per column instead (for weights stored [in, out]).
* `cautious_wd=True` (Cautious Weight Decay, Chen et al. 2025, arXiv:2510.12402): decoupled weight decay only on
  coordinates where the update and the parameter have the same sign, I(u * p >= 0), u being the final update
  direction (after NorMuon; the lr and shape scale are positive and do not change the sign). The decay is
  applied before the update, both from the parameter's value at the start of the step.
* `momentum_dtype=torch.float32` (whole optimizer): keep the momentum buffers in fp32 for bf16 parameters; the
  gradient is upcast into it, the orthogonalisation reads it in its own dtype, and the update is cast back to
  the parameter's dtype when applied.

`dtype` of the orthogonalisation (whole optimizer; None = bf16 on CUDA, and elsewhere bf16 for bf16 parameters
(as `torch.optim.Muon` everywhere) and fp32 for all others). Until the options above were added, bf16 parameters
on CPU were orthogonalised in fp32 by default, which made a bf16 CPU step slower than torch.optim.Muon's (fp32
matmuls instead of native bf16 ones): pass dtype=torch.float32 to get that behaviour back.

Distributed (torch.distributed initialised, or a `process_group` given, with more than one rank): every rank
keeps the full momentum state and updates it, matrices of the same (oriented) shape are stacked (the matrices of
a 3-D bank join the stack one by one, so a bank is shared out across ranks too), and each rank orthogonalises
only its share of every stack, then an all-gather hands everybody every result. Per-rank orthogonalisation cost
is about 1/world of the single-device cost. Results equal the single-device optimizer's. The gather buffers (one
copy of the Muon parameters in the orthogonalisation dtype) are kept between steps.

Gradients must already be averaged across ranks (DDP, or your own all_reduce) unless `average_grads=True`, in
which case Muon averages copies of them itself. Every rank must agree on which parameters have gradients.

Fixed pitfalls of public implementations: a parameter without a gradient is skipped entirely (its momentum is
not decayed and no weight decay is applied); `p.grad` is never written to; stacks of different shapes never
meet in one collective (so gloo works); `state_dict()` is complete on every rank and loads on any world size;
loading it keeps fp32 momentum and NorMuon state in fp32 for bf16 parameters (torch would cast them to bf16).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from speedrun.errors import SpeedrunError
from speedrun.optim.newton_schulz import (DEFAULT_COEFFICIENTS, DEFAULT_STEPS, ns_norm_scale, ns_schedule,
                                          orthogonalize_into)

# torch 2.13 renamed all_gather_into_tensor (deprecated there) to all_gather_single
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

ADJUST_LR_FNS: dict[str, Callable[[int, int], float]] = {
    "original": lambda rows, cols: max(1.0, rows / cols) ** 0.5,
    "match_rms_adamw": lambda rows, cols: 0.2 * math.sqrt(max(rows, cols)),
}
GROUP_OPTIONS = ("lr", "momentum", "nesterov", "weight_decay", "ns_coefficients", "ns_steps", "eps", "adjust_lr_fn",
                 "cautious_wd", "normuon_beta2", "normuon_axis", "ns_norm_scale")
NORMUON_AXES = ("rows", "cols")
NORMUON_EPS = 1e-8
NORMUON_STATE = "normuon_buffer"


def as_matrices(t: torch.Tensor) -> torch.Tensor:
    """The [count, rows, cols] view Muon works on: 2-D -> [1, r, c], 3-D as is, 4-D and up -> [1, out, rest]."""
    if t.ndim == 3:
        return t
    if t.ndim == 2:
        return t.unsqueeze(0)
    return t.reshape(1, t.shape[0], -1)


@dataclass
class _Item:
    """One parameter's share of a step: where its update comes from and how it is applied."""

    param: torch.Tensor
    update: torch.Tensor  # momentum output as [count, m, n], oriented wide (m <= n): a view where possible
    tall: bool
    group: dict
    scale: float


class Muon(torch.optim.Optimizer):
    """Momentum + Newton-Schulz orthogonalisation for matrix parameters (see the module docstring).

    Per-group options: lr, momentum, nesterov, weight_decay, ns_coefficients (one (a, b, c) triple, a list of
    triples, one per iteration, or a name: "polar_express", "polar_express_nanogpt"), ns_steps (None when a
    list is given), eps, adjust_lr_fn, cautious_wd, normuon_beta2 (None: off), normuon_axis ("rows"/"cols"),
    ns_norm_scale (None: what the schedule prescribes, 1.0 for plain triples).
    Whole-optimizer options: `dtype` of the orthogonalisation (default bf16 on CUDA and for bf16 parameters,
    fp32 otherwise), `momentum_dtype` (None: the parameter's dtype), `process_group` (default: the default
    group when torch.distributed is initialised), `average_grads`.
    """

    def __init__(self, params: Iterable, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, *, ns_coefficients=DEFAULT_COEFFICIENTS,
                 ns_steps: int | None = DEFAULT_STEPS, eps: float = 1e-7,
                 adjust_lr_fn: str | Callable[[int, int], float] = "original",
                 dtype: torch.dtype | None = None, process_group=None, average_grads: bool = False,
                 cautious_wd: bool = False, normuon_beta2: float | None = None, normuon_axis: str = "rows",
                 ns_norm_scale: float | None = None, momentum_dtype: torch.dtype | None = None):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_coefficients=ns_coefficients, ns_steps=ns_steps, eps=eps, adjust_lr_fn=adjust_lr_fn,
                        cautious_wd=cautious_wd, normuon_beta2=normuon_beta2, normuon_axis=normuon_axis,
                        ns_norm_scale=ns_norm_scale)
        if momentum_dtype is not None and not (isinstance(momentum_dtype, torch.dtype)
                                               and momentum_dtype.is_floating_point):
            raise SpeedrunError(f"Muon: momentum_dtype must be a floating torch.dtype or None, got {momentum_dtype!r}")
        self.dtype = dtype
        self.momentum_dtype = momentum_dtype
        self.process_group = process_group
        self.average_grads = bool(average_grads)
        # all-gather buffers per stack, kept across steps: fresh ones cost page faults on every CPU step
        self._gather_buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_group(group)
        for p in group["params"]:
            if p.ndim < 2:
                raise SpeedrunError(f"Muon: parameter of shape {tuple(p.shape)} is not a matrix; "
                                    "give 0-D/1-D parameters to AdamW (see speedrun.optim.split_params)")

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader, plus: groups saved before an option existed get its default, and momentum /
        NorMuon state keep their own dtype (torch casts every state tensor to its parameter's dtype)."""
        saved_ids = list(itertools.chain.from_iterable(g["params"] for g in state_dict["param_groups"]))
        saved_state = state_dict["state"]
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key in GROUP_OPTIONS:
                group.setdefault(key, self.defaults[key])
            _check_group(group)
        params = list(itertools.chain.from_iterable(g["params"] for g in self.param_groups))
        for saved_id, p in zip(saved_ids, params):
            entry = saved_state.get(saved_id) or {}
            if isinstance(entry.get("momentum_buffer"), torch.Tensor):
                self.state[p]["momentum_buffer"] = entry["momentum_buffer"].to(
                    device=p.device, dtype=self.momentum_dtype or p.dtype, copy=True)
            if isinstance(entry.get(NORMUON_STATE), torch.Tensor):
                self.state[p][NORMUON_STATE] = entry[NORMUON_STATE].to(device=p.device, dtype=torch.float32, copy=True)

    # --- the step -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = self._rank_and_world()
        grads = self._gradients(world)
        buckets: dict[tuple, list[_Item]] = {}
        for group in self.param_groups:
            schedule = ns_schedule(group["ns_coefficients"], group["ns_steps"])
            norm_scale = group["ns_norm_scale"]
            if norm_scale is None:
                norm_scale = ns_norm_scale(group["ns_coefficients"])
            for item in self._momentum(group, grads):
                device = item.update.device
                key = (tuple(item.update.shape[1:]), schedule, group["eps"], float(norm_scale), device,
                       self._ortho_dtype(item.param, device))
                buckets.setdefault(key, []).append(item)
        pending = []
        offset = 0
        for key, items in buckets.items():
            pending.append(self._orthogonalize_share(key, items, rank, world, offset))
            offset = (offset + sum(item.update.size(0) for item in items)) % world
        for items, results, spans, work in pending:
            if work is not None:
                work.wait()
            for item, span in zip(items, spans):
                self._apply(item, results[span])
        return loss

    def _ortho_dtype(self, param: torch.Tensor, device: torch.device) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        if device.type == "cuda" or param.dtype == torch.bfloat16:
            return torch.bfloat16
        return torch.float32

    def _rank_and_world(self) -> tuple[int, int]:
        group = self.process_group
        if group is None and not (dist.is_available() and dist.is_initialized()):
            return 0, 1
        return dist.get_rank(group), dist.get_world_size(group)

    def _gradients(self, world: int) -> dict[torch.Tensor, torch.Tensor]:
        """Each parameter's gradient (averaged across ranks into fresh tensors when `average_grads`)."""
        grads = {p: p.grad for group in self.param_groups for p in group["params"] if p.grad is not None}
        for g in grads.values():
            if g.is_sparse:
                raise SpeedrunError("Muon: sparse gradients are not supported")
        if not (self.average_grads and world > 1 and grads):
            return grads
        by_dtype: dict[tuple, list[torch.Tensor]] = {}
        for p in grads:
            by_dtype.setdefault((grads[p].dtype, grads[p].device), []).append(p)
        averaged = {}
        for params in by_dtype.values():
            flat = torch.cat([grads[p].reshape(-1) for p in params])  # a copy: p.grad stays as it was
            dist.all_reduce(flat, group=self.process_group)
            flat.div_(world)
            for p, g in zip(params, flat.split([p.numel() for p in params])):
                averaged[p] = g.view_as(p)
        return averaged

    def _momentum(self, group: dict, grads: dict[torch.Tensor, torch.Tensor]) -> list[_Item]:
        """Update this group's momentum buffers (foreach) and return the items to orthogonalise."""
        params = [p for p in group["params"] if p in grads]
        if not params:
            return []
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(
                    p, dtype=self.momentum_dtype or p.dtype, memory_format=torch.preserve_format)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        # a gradient whose dtype differs from its buffer's (fp32 momentum for bf16 weights) is upcast first
        g = [grads[p] if grads[p].dtype == buf.dtype else grads[p].to(buf.dtype) for p, buf in zip(params, bufs)]
        beta = group["momentum"]
        torch._foreach_lerp_(bufs, g, 1 - beta)
        updates = torch._foreach_lerp(g, bufs, beta) if group["nesterov"] else bufs
        adjust = group["adjust_lr_fn"]
        adjust = ADJUST_LR_FNS[adjust] if isinstance(adjust, str) else adjust
        items = []
        for p, u in zip(params, updates):
            u = as_matrices(u)
            rows, cols = u.shape[1:]
            tall = rows > cols
            items.append(_Item(param=p, update=u.mT if tall else u, tall=tall, group=group,
                               scale=float(adjust(rows, cols))))
        return items

    def _orthogonalize_share(self, key: tuple, items: list[_Item], rank: int, world: int, offset: int):
        """Orthogonalise this rank's share of one same-shape stack; start the all-gather of the results.

        Returns (items, results, spans, work): item i's orthogonalised matrices are results[spans[i]].
        """
        shape, schedule, eps, norm_scale, device, dtype = key
        counts = [item.update.size(0) for item in items]
        firsts = list(itertools.accumulate(counts, initial=0))
        n = firsts[-1]
        options = dict(eps=eps, norm_scale=norm_scale)
        if world == 1:
            results = torch.empty((n, *shape), dtype=dtype, device=device)
            orthogonalize_into(results, [item.update for item in items], schedule, **options)
            return items, results, [slice(f, f + c) for f, c in zip(firsts, counts)], None
        chunk, positions = shard_slots(n, world, offset)
        slots = world * chunk
        buffers = self._gather_buffers.get(key)
        if buffers is None or buffers[0].shape[0] != slots:
            results = torch.empty((slots, *shape), dtype=dtype, device=device)
            buffers = self._gather_buffers[key] = (results, torch.empty_like(results[:chunk]))
        results, local = buffers   # slots nobody owns are padding: sent, never read
        # this rank's slots hold matrices j = (slot - offset*chunk) mod slots: at most two runs of consecutive j
        mine = [(positions[j] - rank * chunk, j) for j in range(n) if rank * chunk <= positions[j] < (rank + 1) * chunk]
        for run in _runs(mine):
            (lo, j_lo), (hi, j_hi) = run[0], run[-1]
            pieces = []
            for item, first, count in zip(items, firsts, counts):
                a, b = max(j_lo, first), min(j_hi + 1, first + count)
                if a < b:
                    pieces.append(item.update[a - first:b - first])
            orthogonalize_into(local[lo:hi + 1], pieces, schedule, **options)
        work = _all_gather(results, local, group=self.process_group, async_op=True)
        spans = []
        for first, count in zip(firsts, counts):
            where = positions[first:first + count]
            if where[-1] - where[0] == count - 1:
                spans.append(slice(where[0], where[0] + count))
            else:   # the stack wrapped around inside this item
                spans.append(torch.tensor(where, device=device))
        return items, results, spans, work

    def _apply(self, item: _Item, update: torch.Tensor) -> None:
        """Post-process one parameter's orthogonalised matrices ([count, m, n], wide) and update it."""
        p, group = item.param, item.group
        update = update.mT if item.tall else update   # [count, rows, cols], the parameter's orientation
        if group["normuon_beta2"] is not None:
            update = self._normuon(p, update, group["normuon_beta2"], group["normuon_axis"])
        update = update.reshape(p.shape)
        lr, weight_decay = float(group["lr"]), float(group["weight_decay"])
        if weight_decay:
            if group["cautious_wd"]:
                p.addcmul_(p, (update * p) >= 0, value=-lr * weight_decay)
            else:
                p.mul_(1 - lr * weight_decay)
        p.add_(update, alpha=-lr * item.scale)

    def _normuon(self, p: torch.Tensor, update: torch.Tensor, beta2: float, axis: str) -> torch.Tensor:
        """NorMuon on [count, rows, cols]: per-row (or per-column) second-moment EMA, divide, restore the norm.

        Fused: with v the row means of O**2 and d = sqrt(ema) + eps, the normalised rows are O / d and
        ||O / d||^2 = L * sum(v / d^2) (L the row length), so one factor per row does both steps.
        """
        dim = -1 if axis == "rows" else -2
        length = update.size(dim)
        mean_sq = torch.linalg.vector_norm(update, dim=dim, keepdim=True, dtype=torch.float32).square_().div_(length)
        state = self.state[p]
        ema = state.get(NORMUON_STATE)
        if ema is None:
            ema = state[NORMUON_STATE] = torch.zeros_like(mean_sq)
        elif ema.shape != mean_sq.shape:
            raise SpeedrunError(f"Muon: NorMuon state of shape {tuple(ema.shape)} does not fit the update's "
                                f"{tuple(mean_sq.shape)} (normuon_axis changed?)")
        ema.lerp_(mean_sq, 1 - beta2)
        inv = ema.sqrt().add_(NORMUON_EPS).reciprocal_()
        before = mean_sq.sum(dim=(-2, -1), keepdim=True)
        after = (mean_sq * inv.square()).sum(dim=(-2, -1), keepdim=True)
        factor = inv.mul_(before.div_(after.clamp_min_(torch.finfo(torch.float32).tiny)).sqrt_())
        return update * factor   # fp32 (type promotion); cast to the parameter's dtype when applied


def _runs(pairs: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Split (slot, j) pairs, sorted by j, into runs where both go up by one."""
    runs: list[list[tuple[int, int]]] = []
    for pair in pairs:
        if runs and pair[0] == runs[-1][-1][0] + 1 and pair[1] == runs[-1][-1][1] + 1:
            runs[-1].append(pair)
        else:
            runs.append([pair])
    return runs


def shard_slots(n: int, world: int, offset: int) -> tuple[int, list[int]]:
    """Where each of a stack's `n` matrices goes in the all-gathered buffer, and the per-rank chunk size.

    The stack is padded to `world * chunk` slots and rank r orthogonalises slots [r*chunk, (r+1)*chunk). Matrix i
    sits in slot (i + offset*chunk) mod (world*chunk): `offset` (the number of matrices in earlier stacks, mod
    world) rotates which rank takes the remainder, so that many small stacks do not all land on rank 0.
    """
    chunk = -(-n // world)
    slots = world * chunk
    return chunk, [(i + offset * chunk) % slots for i in range(n)]


def _check_group(group: dict) -> None:
    """Fail early, with the option's name, on hyper-parameters that would silently misbehave."""
    if not group["lr"] >= 0:
        raise SpeedrunError(f"Muon: lr must be >= 0, got {group['lr']!r}")
    if not 0 <= group["momentum"] < 1:
        raise SpeedrunError(f"Muon: momentum must be in [0, 1), got {group['momentum']!r}")
    if not group["weight_decay"] >= 0:
        raise SpeedrunError(f"Muon: weight_decay must be >= 0, got {group['weight_decay']!r}")
    if not group["eps"] > 0:
        raise SpeedrunError(f"Muon: eps must be > 0, got {group['eps']!r}")
    adjust = group["adjust_lr_fn"]
    if isinstance(adjust, str) and adjust not in ADJUST_LR_FNS:
        raise SpeedrunError(f"Muon: adjust_lr_fn must be one of {sorted(ADJUST_LR_FNS)} or a callable, got {adjust!r}")
    if not (isinstance(adjust, str) or callable(adjust)):
        raise SpeedrunError(f"Muon: adjust_lr_fn must be a name or a callable, got {adjust!r}")
    if not isinstance(group["cautious_wd"], bool):
        raise SpeedrunError(f"Muon: cautious_wd must be True or False, got {group['cautious_wd']!r}")
    beta2 = group["normuon_beta2"]
    if beta2 is not None and not (isinstance(beta2, (int, float)) and 0 <= beta2 < 1):
        raise SpeedrunError(f"Muon: normuon_beta2 must be None (off) or in [0, 1), got {beta2!r}")
    if group["normuon_axis"] not in NORMUON_AXES:
        raise SpeedrunError(f"Muon: normuon_axis must be one of {NORMUON_AXES}, got {group['normuon_axis']!r}")
    scale = group["ns_norm_scale"]
    if scale is not None and not (isinstance(scale, (int, float)) and scale > 0):
        raise SpeedrunError(f"Muon: ns_norm_scale must be None or > 0, got {scale!r}")
    ns_schedule(group["ns_coefficients"], group["ns_steps"])
    ns_norm_scale(group["ns_coefficients"])
