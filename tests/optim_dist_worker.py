"""Distributed half of the Muon tests: run under `torchrun --nproc_per_node=2` (gloo) by tests/test_optim_dist.py.

The problem (parameters of mixed shapes including 3-D banks, three param groups with the options, per-step
gradients, a parameter without a gradient at one step) is defined here once and imported by the test, which
replays it on a single device and compares.
Usage: torchrun --standalone --nproc_per_node=2 tests/optim_dist_worker.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

STEPS = 6
RESUME_AT = 3          # the resume check loads a single-device state taken after this many steps
NO_GRAD_STEP = 2       # at this step parameter 0 has no gradient
# 3-D banks (indices 10-12) join the stacks of their matrices' shape and are shared out across ranks matrix by
# matrix; (5, 40, 12) makes a stack of 7 matrices that wraps around the ranks inside a bank.
SHAPES = [(16, 24), (16, 24), (24, 16), (8, 8), (6, 2, 3, 3), (16, 24), (40, 12), (40, 12), (24, 16), (5, 7),
          (3, 16, 24), (5, 40, 12), (3, 24, 16)]
SECOND_GROUP = {6, 7, 8, 9, 11}   # indices of parameters in the second param group (NorMuon, cautious decay)
THIRD_GROUP = {12}                # Polar Express, NorMuon per column


def make_params() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1234)
    return [torch.randn(shape, generator=gen).requires_grad_() for shape in SHAPES]


def make_optimizer(params: list[torch.Tensor], **kwargs):
    from speedrun.optim import Muon

    first = [p for i, p in enumerate(params) if i not in SECOND_GROUP | THIRD_GROUP]
    second = [p for i, p in enumerate(params) if i in SECOND_GROUP]
    third = [p for i, p in enumerate(params) if i in THIRD_GROUP]
    groups = [
        {"params": first},
        {"params": second, "lr": 0.05, "weight_decay": 0.1, "nesterov": False, "adjust_lr_fn": "match_rms_adamw",
         "ns_coefficients": [(3.0, -3.2, 1.2)] * 4 + [(1.875, -1.25, 0.375)], "ns_steps": None,
         "normuon_beta2": 0.9, "cautious_wd": True},
        {"params": third, "ns_coefficients": "polar_express", "normuon_beta2": 0.95, "normuon_axis": "cols"},
    ]
    return Muon(groups, lr=0.02, momentum=0.9, weight_decay=0.01, **kwargs)


def grads_at(step: int, rank: int | None = None) -> list[torch.Tensor | None]:
    """Gradients for one step; `rank` given: that rank's own (un-averaged) gradients."""
    gen = torch.Generator().manual_seed(10_000 + 100 * step + (0 if rank is None else 1 + rank))
    grads = [torch.randn(shape, generator=gen) for shape in SHAPES]
    if step == NO_GRAD_STEP:
        grads[0] = None
    return grads


def set_grads(params, grads) -> None:
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()


def main(out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()

    # 1. gradients already averaged (identical on every rank)
    params = make_params()
    opt = make_optimizer(params)
    for step in range(STEPS):
        set_grads(params, grads_at(step))
        opt.step()
    torch.save({"params": [p.detach() for p in params], "state": opt.state_dict()}, out / f"replicated-{rank}.pt")

    # 2. Muon averages each rank's own gradients, leaving p.grad alone
    params = make_params()
    opt = make_optimizer(params, average_grads=True)
    grad_intact = True
    for step in range(STEPS):
        grads = grads_at(step, rank)
        set_grads(params, grads)
        opt.step()
        grad_intact &= all((p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
                           for p, g in zip(params, grads))
    torch.save({"params": [p.detach() for p in params], "grad_intact": grad_intact}, out / f"averaging-{rank}.pt")

    # 3. a single-device state dict loads on two ranks and carries on identically
    saved = torch.load(out / "single-resume.pt")
    params = make_params()
    with torch.no_grad():
        for p, value in zip(params, saved["params"]):
            p.copy_(value)
    opt = make_optimizer(params)
    opt.load_state_dict(saved["state"])
    for step in range(RESUME_AT, STEPS):
        set_grads(params, grads_at(step))
        opt.step()
    torch.save({"params": [p.detach() for p in params]}, out / f"resumed-{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main(Path(sys.argv[1]))
