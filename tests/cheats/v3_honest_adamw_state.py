"""False accusation (an HONEST script): warm-up crashes when an optimizer already holds a 0-dim state tensor.

The record, with torch's own AdamW for the embedding and the head, whose state the script creates up front
(step = tensor(0.), exp_avg and exp_avg_sq zeros: what torch.optim.AdamW would create at its first step, so
training is unchanged; scripts do it to allocate memory early or to keep tensors stable for compiled
optimizer steps). `run.warmup()` digests the optimizers' state before the block, and its digest views every
tensor as bytes: `tensor(0.).view(torch.uint8)` raises for a 0-dim tensor, so today the honest script dies
in warmup(). It must qualify with no problem.
"""

ADAMW = "AdamW(split.adamw, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)]\n"

EAGER_STATE = '''for group in optimizers[-1].param_groups:  # state allocated up front, as torch.optim.AdamW would at step 1
    for p in group["params"]:
        optimizers[-1].state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                   "exp_avg_sq": torch.zeros_like(p)}
'''

LR_SETUP = 'for opt in optimizers:\n    for group in opt.param_groups:\n        group["initial_lr"]'

PATCHES = [
    ("optimizers = [Muon(split.muon, momentum=0.95), " + ADAMW,
     "optimizers = [Muon(split.muon, momentum=0.95), torch.optim." + ADAMW),
    (LR_SETUP, EAGER_STATE + LR_SETUP),
]
