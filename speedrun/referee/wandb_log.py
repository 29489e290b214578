"""Mirror a repetition's events to Weights & Biases, live (`speedrun run --wandb`).

The run directory stays the evidence; wandb is a window onto it for people who watch their runs there. So the
sink never decides anything and never stops a run: without wandb installed, with `WANDB_MODE=disabled`, or
when wandb cannot start (no key, no network), it reports one line (`speedrun.report`) and does nothing. `WANDB_MODE=offline`
works without a key and keeps wandb's files under the run directory (`<run_dir>/wandb/`).

What is logged, every row against `step` (the referee's step count, i.e. batches served):

  log events    the script's `run.log(...)` scalars: `train_loss` as `train/loss`, any other number X as
                `train/X` (a `train_` prefix is dropped)
  train events  `timed_s`, `train/tokens` (tokens served so far), `train/tokens_per_s` (since the previous
                train event), `train/avg_tokens_per_s` (since the clock started); an API-1 or imported train
                event's own `loss` becomes `train/loss`
  val events    `val/loss`, `timed_s`, `val/seconds` (the paused validation's duration), `val/tokens` (val
                tokens scored) and `val/tokens_per_s` (tokens scored per validation second)

Rows reach wandb in step order, one row per step where the scalars do not collide. The script's `run.log`
scalars arrive late, in batches (a rank sends them every 64 calls, and the last ones at finish, after the
final validation), behind the train and val events of the same steps; so a row waits until the script's
logs have reached its step, or until it is `HOLD_STEPS` behind the newest step (a script that logs rarely or
never), or until the finish. A log that still arrives behind rows already sent is sent, not dropped.

The manifest becomes the run's config; start, warmup, probe, warning, problem and finish events go to the
summary (`final/timed_s`, `final/tokens`, `final/avg_tokens_per_s`, ...), and `finish(status)` adds `status`.
Only the standard library is imported until `open()` is called.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from speedrun.report import SILENT, Reporter

STEP = "step"
HOLD_STEPS = 256  # a row waits at most this many steps for the script's late logs of its step


def _number(value: Any) -> float | int | None:
    """A loggable number, or None (booleans, strings, containers and None are not scalars to plot)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def scalar_key(name: str) -> str:
    """The wandb key of a `run.log` scalar: `train_loss` -> `train/loss`, `lr` -> `train/lr`."""
    name = str(name)
    return "train/" + (name[len("train_"):] if name.startswith("train_") and len(name) > 6 else name)


class WandbSink:
    """One wandb run per repetition. Use `WandbSink.open(...)`; a sink whose `run` is None is a no-op."""

    def __init__(self, run: Any = None, report: Reporter = SILENT):
        self.run = run
        self.report = report                     # where the one-line notices go
        self.warnings = 0
        self.problems = 0
        self.step = 0                            # the last step seen, for log events without one
        self._last_train: tuple[float, int] | None = None  # (timed_s, tokens) of the previous train event
        self._pending: list[dict] = []           # rows waiting for the script's logs of their step, by step
        self._logged_to: int | None = None       # the highest step of the script's log events so far

    @classmethod
    def open(cls, project: str | None, manifest: dict, repetition: int, run_dir: str | os.PathLike,
             name: str | None = None, entity: str | None = None, report: Reporter = SILENT) -> "WandbSink":
        """Start the wandb run of repetition `repetition` of `run_dir` (named `<run dir>-<k>` unless `name`
        is given; `entity` is the wandb team or user, default wandb's own default). A notice (not logging,
        and why) goes to `report`, as one line."""

        def notice(message: str) -> None:
            report.line(f"speedrun: wandb: {message}")

        if os.environ.get("WANDB_MODE", "").strip().lower() == "disabled":
            notice("WANDB_MODE=disabled, not logging")
            return cls(report=report)
        try:
            import wandb
        except ImportError:
            notice("wandb is not installed (pip install wandb), not logging")
            return cls(report=report)
        run_dir = Path(run_dir)
        track = (manifest.get("track") or {}).get("name")
        try:
            run = wandb.init(
                project=project or "speedrun",
                entity=entity or None,
                name=name or f"{run_dir.name}-{repetition}",
                group=run_dir.name,
                job_type=track or "run",
                config={**manifest, "repetition": repetition},
                dir=str(run_dir),
                # the launcher's own output is not the run's: wandb must not wrap stdout/stderr
                settings=wandb.Settings(console="off"),
            )
        except Exception as exc:  # wandb raises many kinds (usage, auth, network); none may stop the run
            notice(f"could not start ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                   f"not logging")
            return cls(report=report)
        run.define_metric(STEP)
        for key in ("train/*", "val/*", "timed_s"):
            run.define_metric(key, step_metric=STEP)
        return cls(run, report)

    # --- events -------------------------------------------------------------------------------------------

    def log(self, event: dict) -> None:
        """Forward one evidence event; kinds without a time series go to the summary."""
        if self.run is None:
            return
        kind = event.get("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _row(self, row: dict) -> None:
        row = {k: v for k, v in row.items() if v is not None}
        if len(row) <= 1:  # nothing but the step
            return
        step = row[STEP]
        same = next((r for r in self._pending if r[STEP] == step and not (r.keys() & row.keys()) - {STEP}), None)
        if same is not None:
            same.update(row)  # one row per step
        else:
            self._pending.append(row)
            self._pending.sort(key=lambda r: r[STEP])  # stable: rows of one step keep their arrival order
        self._release()

    def _release(self, everything: bool = False) -> None:
        """Send the pending rows the script's logs have caught up with (all of them with `everything`)."""
        if not self._pending:
            return
        newest = self._pending[-1][STEP]
        ready = 0
        for row in self._pending:
            step = row[STEP]
            if not (everything or step <= (self._logged_to if self._logged_to is not None else -1)
                    or step <= newest - HOLD_STEPS):
                break
            ready += 1
        sent, self._pending = self._pending[:ready], self._pending[ready:]
        for row in sent:
            self.run.log(row)

    def _step_of(self, event: dict) -> int:
        for key in ("step", "batches"):
            if isinstance(event.get(key), int) and not isinstance(event.get(key), bool):
                self.step = event[key]
                return self.step
        return self.step

    def _on_log(self, event: dict) -> None:
        scalars = event.get("scalars")
        if not isinstance(scalars, dict):
            return
        row = {STEP: self._step_of(event)}
        for name, value in scalars.items():
            row[scalar_key(name)] = _number(value)
        self._logged_to = max(row[STEP], self._logged_to if self._logged_to is not None else row[STEP])
        self._row(row)

    def _on_train(self, event: dict) -> None:
        row = {STEP: self._step_of(event), "train/loss": _number(event.get("loss"))}
        timed, tokens = _number(event.get("timed_s")), _number(event.get("tokens"))
        row["timed_s"] = timed
        if timed is not None and tokens is not None:
            row["train/tokens"] = tokens
            if timed > 0:
                row["train/avg_tokens_per_s"] = tokens / timed
            before_t, before_tokens = self._last_train or (0.0, 0)
            if timed > before_t and tokens >= before_tokens:
                row["train/tokens_per_s"] = (tokens - before_tokens) / (timed - before_t)
            self._last_train = (timed, tokens)
        self._row(row)

    def _on_val(self, event: dict) -> None:
        loss = _number(event.get("loss"))
        row = {STEP: self._step_of(event), "val/loss": loss, "timed_s": _number(event.get("timed_s")),
               "val/seconds": _number(event.get("seconds")), "val/tokens": _number(event.get("tokens"))}
        if row["val/tokens"] is not None and row["val/seconds"]:
            row["val/tokens_per_s"] = row["val/tokens"] / row["val/seconds"]
        self._row(row)
        if loss is not None and math.isfinite(loss):
            self.run.summary["val/loss"] = loss

    def _on_finish(self, event: dict) -> None:
        self._release(everything=True)
        summary = self.run.summary
        for key in ("batches", "step", "timed_s", "tokens"):
            if _number(event.get(key)) is not None:
                summary[f"final/{key}"] = event[key]
        timed, tokens = _number(event.get("timed_s")), _number(event.get("tokens"))
        if timed and tokens is not None:
            summary["final/avg_tokens_per_s"] = tokens / timed

    def _on_start(self, event: dict) -> None:
        for key in ("start_loss", "no_data_level"):
            if _number(event.get(key)) is not None:
                self.run.summary[f"start/{key}"] = event[key]

    def _on_probe(self, event: dict) -> None:
        self.run.summary[f"probe/{event.get('name')}"] = bool(event.get("passed"))

    def _on_warmup(self, event: dict) -> None:
        if _number(event.get("seconds")) is not None:
            self.run.summary["warmup/seconds"] = event["seconds"]

    def _on_warning(self, event: dict) -> None:
        self.warnings += 1
        self.run.summary["warnings"] = self.warnings
        self.run.summary["last_warning"] = str(event.get("message", ""))[:500]

    def _on_problem(self, event: dict) -> None:
        self.problems += 1
        self.run.summary["problems"] = self.problems
        self.run.summary["last_problem"] = str(event.get("message", ""))[:500]

    def finish(self, status: str) -> None:
        """Close the wandb run; a status other than "ok" marks it failed. Safe to call twice."""
        if self.run is None:
            return
        try:
            self._release(everything=True)
        except Exception:  # sending must never fail a run
            pass
        run, self.run = self.run, None
        try:
            run.summary["status"] = status
            run.finish(exit_code=0 if status == "ok" else 1)
            # finish() may return before wandb's service has flushed the run's files (with wandb 0.31 offline,
            # run-*.wandb can still be empty right after it); tearing the service down waits until it has
            # written everything. The next repetition's open() starts a fresh one.
            import wandb

            wandb.teardown()
        except Exception as exc:  # closing must never fail a run either
            self.report.line(f"speedrun: wandb: could not finish cleanly ({type(exc).__name__}: {exc}); the run's "
                             f"wandb files may be incomplete")
