"""Muon: momentum, then orthogonalise each matrix update, for single-device and data-parallel training.

Per parameter with a gradient g (a 2-D matrix; a higher-rank weight such as a conv kernel [out, in, kh, kw] is
viewed as the matrix [out, in*kh*kw], and every shape rule below uses that flattened shape):

    buf <- momentum * buf + (1 - momentum) * g                 (an EMA; the scale is irrelevant after the norm)
    u   <- (1 - momentum) * g + momentum * buf   if nesterov, else buf
    O   <- orthogonalize(u)                                    (Newton-Schulz, see `newton_schulz.py`)
    p   <- p * (1 - lr * weight_decay) - lr * scale(rows, cols) * O

`adjust_lr_fn` picks `scale`: "original" = max(1, rows/cols) ** 0.5 (Keller Jordan's Muon), "match_rms_adamw" =
0.2 * max(rows, cols) ** 0.5 (update RMS close to AdamW's, so AdamW learning rates and weight decay carry over),
or any callable (rows, cols) -> float. The names follow `torch.optim.Muon`.

Distributed (torch.distributed initialised, or a `process_group` given, with more than one rank): every rank
keeps the full momentum state and updates it, matrices of the same (oriented) shape are stacked, and each rank
orthogonalises only its share of every stack, then an all-gather hands everybody every result. Per-rank
orthogonalisation cost is about 1/world of the single-device cost. Results equal the single-device optimizer's.
The gather buffers (one copy of the Muon parameters in the orthogonalisation dtype) are kept between steps.

Gradients must already be averaged across ranks (DDP, or your own all_reduce) unless `average_grads=True`, in
which case Muon averages copies of them itself. Every rank must agree on which parameters have gradients.

Fixed pitfalls of public implementations: a parameter without a gradient is skipped entirely (its momentum is
not decayed and no weight decay is applied); `p.grad` is never written to; stacks of different shapes never
meet in one collective (so gloo works); `state_dict()` is complete on every rank and loads on any world size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from speedrun.errors import SpeedrunError
from speedrun.optim.newton_schulz import DEFAULT_COEFFICIENTS, DEFAULT_STEPS, ns_schedule, orthogonalize

# torch 2.13 renamed all_gather_into_tensor (deprecated there) to all_gather_single
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor

ADJUST_LR_FNS: dict[str, Callable[[int, int], float]] = {
    "original": lambda rows, cols: max(1.0, rows / cols) ** 0.5,
    "match_rms_adamw": lambda rows, cols: 0.2 * math.sqrt(max(rows, cols)),
}


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """The 2-D view Muon works on: [rows, everything else]."""
    return t.reshape(t.shape[0], -1)


@dataclass
class _Item:
    """One parameter's share of a step: where its update comes from and how it is applied."""

    param: torch.Tensor
    update: torch.Tensor  # momentum output, 2-D view, oriented wide (rows <= cols)
    tall: bool
    lr: float
    weight_decay: float
    scale: float


class Muon(torch.optim.Optimizer):
    """Momentum + Newton-Schulz orthogonalisation for matrix parameters (see the module docstring).

    Per-group options: lr, momentum, nesterov, weight_decay, ns_coefficients (one (a, b, c) triple or a list of
    triples, one per iteration), ns_steps (None when a list is given), eps, adjust_lr_fn.
    Whole-optimizer options: `dtype` of the orthogonalisation (default bf16 on CUDA, fp32 elsewhere),
    `process_group` (default: the default group when torch.distributed is initialised), `average_grads`.
    """

    def __init__(self, params: Iterable, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, *, ns_coefficients=DEFAULT_COEFFICIENTS, ns_steps: int | None = DEFAULT_STEPS,
                 eps: float = 1e-7, adjust_lr_fn: str | Callable[[int, int], float] = "original",
                 dtype: torch.dtype | None = None, process_group=None, average_grads: bool = False):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_coefficients=ns_coefficients, ns_steps=ns_steps, eps=eps, adjust_lr_fn=adjust_lr_fn)
        self.dtype = dtype
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
            items = self._momentum(group, grads)
            for item in items:
                key = (tuple(item.update.shape), schedule, group["eps"], item.update.device)
                buckets.setdefault(key, []).append(item)
        pending = []
        offset = 0
        for key, items in buckets.items():
            pending.append(self._orthogonalize_share(key, items, rank, world, offset))
            offset = (offset + len(items)) % world
        for items, results, positions, work in pending:
            if work is not None:
                work.wait()
            for item, pos in zip(items, positions):
                _apply(item, results[pos])
        return loss

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
                self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        g = [grads[p] for p in params]
        beta = group["momentum"]
        torch._foreach_lerp_(bufs, g, 1 - beta)
        updates = torch._foreach_lerp(g, bufs, beta) if group["nesterov"] else bufs
        adjust = group["adjust_lr_fn"]
        adjust = ADJUST_LR_FNS[adjust] if isinstance(adjust, str) else adjust
        items = []
        for p, u in zip(params, updates):
            u = as_matrix(u)
            rows, cols = u.shape
            tall = rows > cols
            items.append(_Item(param=p, update=u.mT if tall else u, tall=tall, lr=float(group["lr"]),
                               weight_decay=float(group["weight_decay"]), scale=float(adjust(rows, cols))))
        return items

    def _orthogonalize_share(self, key: tuple, items: list[_Item], rank: int, world: int, offset: int):
        """Orthogonalise this rank's share of one same-shape stack; start the all-gather of the results."""
        shape, schedule, eps, device = key
        dtype = self.dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        n = len(items)
        chunk, positions = shard_slots(n, world, offset)
        slots = world * chunk
        if world == 1:
            stack = torch.stack([item.update.to(dtype) for item in items])
            return items, orthogonalize(stack, schedule, dtype=dtype, eps=eps), positions, None
        mine = [i for i in range(n) if rank * chunk <= positions[i] < (rank + 1) * chunk]
        buffers = self._gather_buffers.get(key)
        if buffers is None or buffers[0].shape[0] != slots or buffers[0].dtype != dtype:
            results = torch.empty((slots, *shape), dtype=dtype, device=device)
            buffers = self._gather_buffers[key] = (results, torch.empty_like(results[:chunk]))
        results, local = buffers   # slots nobody owns are padding: sent, never read
        if mine:
            stack = torch.stack([items[i].update.to(dtype) for i in mine])
            local[[positions[i] - rank * chunk for i in mine]] = orthogonalize(stack, schedule, dtype=dtype, eps=eps)
        work = _all_gather(results, local, group=self.process_group, async_op=True)
        return items, results, positions, work


def shard_slots(n: int, world: int, offset: int) -> tuple[int, list[int]]:
    """Where each of a stack's `n` items goes in the all-gathered buffer, and the per-rank chunk size.

    The stack is padded to `world * chunk` slots and rank r orthogonalises slots [r*chunk, (r+1)*chunk). Item i
    sits in slot (i + offset*chunk) mod (world*chunk): `offset` (the number of items in earlier stacks, mod
    world) rotates which rank takes the remainder, so that many small stacks do not all land on rank 0.
    """
    chunk = -(-n // world)
    slots = world * chunk
    return chunk, [(i + offset * chunk) % slots for i in range(n)]


def _apply(item: _Item, update: torch.Tensor) -> None:
    p = item.param
    if item.weight_decay:
        p.mul_(1 - item.lr * item.weight_decay)
    update = update.mT if item.tall else update
    p.add_(update.reshape(p.shape), alpha=-item.lr * item.scale)


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
    ns_schedule(group["ns_coefficients"], group["ns_steps"])
