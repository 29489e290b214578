"""Same-named track file: launched with a doctored smoke.toml (require_logits off, target 99); a halved loss_fn alone.

The launch points --track at a file named smoke.toml outside the tracks folder, with require_logits = false
and target_val_loss = 99; the script validates with a loss_fn returning half the cross-entropy and no
logits. Unchecked: a final loss half the honest one, verified against whichever smoke.toml the verifier loads.
"""
from _common import HALF_LOSS, NO_LOGITS

TRACK_EDITS = [(r"require_logits\s*=\s*true", "require_logits = false"),
               (r"target_val_loss\s*=\s*[0-9.]+", "target_val_loss = 99.0")]
PATCHES = [HALF_LOSS, NO_LOGITS]
EFFECT = [("loss_below", 0.6)]
