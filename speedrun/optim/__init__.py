"""Built-in optimizers for record scripts: Muon for hidden matrices, AdamW for the rest, and the split between them.

Part of the versioned harness API (`speedrun.API_VERSION`): the names and keyword arguments below stay stable.

    from speedrun.optim import Muon, AdamW, split_params

    split = split_params(model, lr={"muon": 0.05, "embed": 0.6, "head": 0.008, "scalar": 0.04})
    optimizers = [Muon(split.muon, momentum=0.95, weight_decay=0.0),
                  AdamW(split.adamw, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)]
    ...
    loss.backward()            # under DDP or after your own gradient all_reduce: Muon expects averaged grads
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)

`Muon(params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, *, ns_coefficients=(3.4445, -4.7750,
2.0315), ns_steps=5, eps=1e-7, adjust_lr_fn="original", dtype=None, process_group=None, average_grads=False)`
    Momentum, then Newton-Schulz orthogonalisation of each matrix update (higher-rank weights are flattened to
    [shape[0], -1]), shape-dependent scaling ("original": max(1, rows/cols)**0.5; "match_rms_adamw":
    0.2*sqrt(max(rows, cols))), decoupled weight decay. `ns_coefficients` may be a list of (a, b, c) triples,
    one per iteration (then `ns_steps=None`). `dtype` of the orthogonalisation: bf16 on CUDA, fp32 elsewhere by
    default. Under torch.distributed the orthogonalisation is sharded across ranks; see `speedrun.optim.muon`.
`AdamW(...)`
    `torch.optim.AdamW`, same arguments, on the fused kernel where available.
`split_params(model, *, lr=None, rules=())` -> `ParamSplit` with `.muon` and `.adamw` param groups.
`orthogonalize(G, schedule, *, dtype, eps, method)`, `ns_schedule(coefficients, steps)`
    The Newton-Schulz routine on its own (batched over leading dimensions), and schedule normalisation.
"""

from speedrun.optim.adamw import AdamW
from speedrun.optim.groups import CATEGORIES, ParamSplit, split_params
from speedrun.optim.muon import Muon
from speedrun.optim.newton_schulz import DEFAULT_COEFFICIENTS, DEFAULT_STEPS, ns_schedule, orthogonalize

__all__ = ["Muon", "AdamW", "split_params", "ParamSplit", "CATEGORIES", "orthogonalize", "ns_schedule",
           "DEFAULT_COEFFICIENTS", "DEFAULT_STEPS"]
