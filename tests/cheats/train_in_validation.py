"""Clock-pause abuse: 40 training steps (next(train) and optimizer steps) inside logits_fn, during validation.

The first time logits_fn runs in eval mode (inside the final validation, with the clock paused) it trains 40
steps on the loader's batches, then answers with the trained model. Unchecked: a final loss far below the
honest run's at about the same timed seconds.
"""
from _common import INIT, ROUTE, logits_fn

PATCHES = [
    (INIT, INIT + "SMUGGLED = [0]\n"),
    ROUTE,
    logits_fn('''    if SMUGGLED[0] == 0 and not model.training:  # cheat: inside validation the clock is paused
        SMUGGLED[0] = 40
        with torch.enable_grad():
            model.train()
            for _ in range(40):
                train_step(0)
            model.eval()
        with autocast:
            logits = fwd(inputs)
    return logits
'''),
]
EFFECT = [("loss_below", 0.8)]
