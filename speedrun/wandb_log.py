"""Mirror a repetition's events to Weights & Biases, live (`speedrun run --wandb`).

The run directory stays the evidence; wandb is a window onto it for people who watch their runs there. So the
sink never decides anything and never stops a run: without wandb installed, with `WANDB_MODE=disabled`, or
when wandb cannot start (no key, no network), it prints one line and does nothing. `WANDB_MODE=offline`
works without a key and keeps wandb's files under the run directory (`<run_dir>/wandb/`).

Events arrive as `speedrun.evidence` writes them. Losses are logged against the training step
(`val/loss`, `train/loss`), with the referee's `timed_s` and `tokens` beside them so the wandb UI can also plot
against time; the manifest becomes the run's config and the finish/probe/warning events its summary.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _notice(message: str) -> None:
    print(f"speedrun: wandb: {message}", flush=True)


class WandbSink:
    """One wandb run per repetition. Use `WandbSink.open(...)`; a sink whose `run` is None is a no-op."""

    def __init__(self, run: Any = None):
        self.run = run
        self.warnings = 0

    @classmethod
    def open(cls, project: str | None, manifest: dict, repetition: int, run_dir: str | os.PathLike,
             name: str | None = None) -> "WandbSink":
        if os.environ.get("WANDB_MODE", "").strip().lower() == "disabled":
            _notice("WANDB_MODE=disabled, not logging")
            return cls()
        try:
            import wandb
        except ImportError:
            _notice("wandb is not installed (pip install wandb), not logging")
            return cls()
        run_dir = Path(run_dir)
        track = (manifest.get("track") or {}).get("name")
        try:
            run = wandb.init(
                project=project or "speedrun",
                name=name or f"{run_dir.name}-{repetition}",
                group=run_dir.name,
                job_type=track or "run",
                config={**manifest, "repetition": repetition},
                dir=str(run_dir),
            )
        except Exception as exc:  # wandb raises many kinds (usage, auth, network); none may stop the run
            _notice(f"could not start ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    f"not logging")
            return cls()
        run.define_metric("step")
        for key in ("val/*", "train/*", "timed_s", "tokens"):
            run.define_metric(key, step_metric="step")
        return cls(run)

    def log(self, event: dict) -> None:
        """Forward one evidence event; kinds without a time series go to the summary."""
        if self.run is None:
            return
        kind = event.get("event")
        if kind in ("val", "train"):
            row = {"step": event.get("step"), f"{kind}/loss": event.get("loss")}
            for key in ("timed_s", "tokens"):
                if event.get(key) is not None:
                    row[key] = event[key]
            if kind == "val" and event.get("seconds") is not None:
                row["val/seconds"] = event["seconds"]
            self.run.log({k: v for k, v in row.items() if v is not None})
        elif kind == "finish":
            for key in ("step", "timed_s", "tokens"):
                if event.get(key) is not None:
                    self.run.summary[f"final/{key}"] = event[key]
        elif kind == "probe":
            self.run.summary[f"probe/{event.get('name')}"] = bool(event.get("passed"))
        elif kind == "warmup":
            self.run.summary["warmup/seconds"] = event.get("seconds")
        elif kind == "warning":
            self.warnings += 1
            self.run.summary["warnings"] = self.warnings
            self.run.summary["last_warning"] = str(event.get("message", ""))[:500]

    def finish(self, status: str) -> None:
        """Close the wandb run; a status other than "ok" marks it failed. Safe to call twice."""
        if self.run is None:
            return
        run, self.run = self.run, None
        run.summary["status"] = status
        run.finish(exit_code=0 if status == "ok" else 1)
