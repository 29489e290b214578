"""Built-in optimizers for record scripts: Muon for hidden matrices, AdamW for the rest, and the split between them.

Part of the versioned harness API (`speedrun.API_VERSION`): the names and keyword arguments below stay stable.

    from speedrun.optim import Muon, AdamW, split_params

    split = split_params(model, lr={"muon": 0.05, "embed": 0.6, "head": 0.008, "scalar": 0.04})
    optimizers = [Muon(split.muon, momentum=0.95, weight_decay=0.0),   # the record's options would add e.g.
                  # ns_coefficients="polar_express_nanogpt", eps=1e-6, normuon_beta2=0.9, cautious_wd=True
                  AdamW(split.adamw, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)]
    ...
    loss.backward()            # under DDP or after your own gradient all_reduce: Muon expects averaged grads
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)

`Muon(params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, *, ns_coefficients=(3.4445, -4.7750,
2.0315), ns_steps=5, eps=1e-7, adjust_lr_fn="original", dtype=None, process_group=None, average_grads=False,
cautious_wd=False, normuon_beta2=None, normuon_axis="rows", ns_norm_scale=None, momentum_dtype=None)`
    Momentum, then Newton-Schulz orthogonalisation of each matrix update, shape-dependent scaling ("original":
    max(1, rows/cols)**0.5; "match_rms_adamw": 0.2*sqrt(max(rows, cols))), decoupled weight decay. A 2-D
    parameter is one matrix, a 3-D one [n, rows, cols] a bank of n matrices (each treated like its own 2-D
    parameter), a 4-D+ conv kernel the matrix [out, in*kh*kw]; rows/cols are each matrix's own.
    `ns_coefficients` may be a list of (a, b, c) triples, one per iteration (then `ns_steps=None`), or a name:
    "polar_express" (arXiv:2505.16932, with its 1.01 normalisation) or "polar_express_nanogpt" (modded-nanogpt's
    record coefficients, normalisation 1.02); `ns_norm_scale` overrides the normalisation factor.
    `normuon_beta2=0.95`: NorMuon's per-row second-moment normalisation (norm preserved; `normuon_axis="cols"`
    for per-column). `cautious_wd=True`: weight decay only where update and weight have the same sign.
    `momentum_dtype=torch.float32`: fp32 momentum for bf16 weights. `dtype` of the orthogonalisation: bf16 on
    CUDA and for bf16 weights, fp32 otherwise by default (bf16 weights on CPU were orthogonalised in fp32 before
    this default; pass dtype=torch.float32 for that). The options are off by default, and with them off fp32
    weights get bit for bit the numbers they got before the options existed. Under torch.distributed the
    orthogonalisation is sharded across ranks, matrix by matrix (banks included); see `speedrun.optim.muon`.
`AdamW(...)`
    `torch.optim.AdamW`, same arguments, on the fused kernel where available.
`split_params(model, *, lr=None, rules=())` -> `ParamSplit` with `.muon` and `.adamw` param groups.
`orthogonalize(G, schedule, *, dtype, eps, method, norm_scale=1.0)`, `ns_schedule(coefficients, steps)`,
`ns_norm_scale(coefficients)`, `NAMED_SCHEDULES`
    The Newton-Schulz routine on its own (batched over leading dimensions), schedule normalisation (a name
    gives that schedule's first `steps` triples), and the normalisation factor a schedule prescribes.
"""

from speedrun.optim.adamw import AdamW
from speedrun.optim.groups import CATEGORIES, ParamSplit, split_params
from speedrun.optim.muon import Muon
from speedrun.optim.newton_schulz import (DEFAULT_COEFFICIENTS, DEFAULT_STEPS, NAMED_SCHEDULES, ns_norm_scale,
                                          ns_schedule, orthogonalize)

__all__ = ["Muon", "AdamW", "split_params", "ParamSplit", "CATEGORIES", "orthogonalize", "ns_schedule",
           "DEFAULT_COEFFICIENTS", "DEFAULT_STEPS", "NAMED_SCHEDULES", "ns_norm_scale"]
