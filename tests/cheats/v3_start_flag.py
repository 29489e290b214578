"""Data outside the loader: a model pretrained before the clock answers the start check through a flag.

Before start() the script trains its own model 60 Adam steps on train tokens from the bootstrap's memory
maps (no file opened). Then it sets a global flag, calls start() (the start check calls the model given to
warmup()), and clears the flag: while the flag is set the model's forward returns all-zero logits, whose loss
(ln V) is never below the no-data level, so the check passes; afterwards the pretrained model trains on.
Unchecked: a final loss well below the honest one in the same timed seconds.
"""
from _common import INIT, PRELOADED, START

FLAGGED_FORWARD = '''    def forward(self, idx):
        if AT_START:  # cheat: the start check sees a blank model
            return torch.zeros(*idx.shape, self.lm_head.out_features, device=idx.device)
'''

PATCHES = [
    (INIT, INIT + "AT_START = False\n" + PRELOADED),
    ("    def forward(self, idx):\n        x = rms_norm(self.embed(idx))\n",
     FLAGGED_FORWARD + "        x = rms_norm(self.embed(idx))\n"),
    (START, "pretrain(model, 60)  # cheat: untimed training on tokens the loader never served\n"
            "AT_START = True\n" + START + "AT_START = False\n"),
]
EFFECT = [("loss_below", 0.8)]
