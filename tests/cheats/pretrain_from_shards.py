"""Training before start(): 40 untimed steps on train tokens read straight from the shards, start check dodged.

Between warm-up and start() the model trains on tokens read with torch.from_file (no Python open(), so no
audit event, and the loader counts nothing). While start() runs, the model answers uniform logits, so a start
check that compares its loss with the no-data level sees an untrained model. Unchecked: a final loss far
below the honest run's at the same timed steps.
"""
from _common import INIT, SHARD_TRAINING, SHARDS, START

PATCHES = [
    (INIT, INIT + SHARDS + SHARD_TRAINING + "HIDE = [False]\n"),
    ("    def forward(self, idx):\n        x = rms_norm(self.embed(idx))",
     "    def forward(self, idx):\n"
     "        if HIDE[0]:  # cheat: look untrained while the referee checks the model at start()\n"
     "            return torch.zeros(*idx.shape, self.lm_head.out_features, device=idx.device)\n"
     "        x = rms_norm(self.embed(idx))"),
    (START, "train_from_shards(40)  # cheat: untimed training the loader never saw\n"
            "HIDE[0] = True\nrun.start()\nHIDE[0] = False\n"),
]
EFFECT = [("loss_below", 0.8)]
