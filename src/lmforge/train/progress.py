"""Training progress: a rich progress bar (step, loss, tokens/s, ETA) on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    def __init__(
        self, total_steps: int, start_step: int = 0, enabled: bool = True, max_seconds: float | None = None
    ):
        self.console = Console(stderr=True)
        self.enabled = enabled
        self.total = total_steps
        self.max_seconds = max_seconds
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None
        self._last_plain = 0.0
        if self.tty:
            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task("train", total=total_steps, completed=start_step, loss="-", tps="-")
            self.bar.start()

    def update(
        self, step: int, loss: float | None, tokens_per_s: float, elapsed: float, total: int | None = None
    ) -> None:
        """`total`: the steps the run is now expected to take, when a time limit will end it before total_steps."""
        if not self.enabled:
            return
        if total is not None:
            self.total = total
        loss_text = f"{loss:.4f}" if loss is not None else "-"
        if self.bar is not None:
            self.bar.update(
                self.task, total=self.total, completed=step, loss=loss_text, tps=f"{tokens_per_s:,.0f}"
            )
            return
        now = time.monotonic()
        if now - self._last_plain >= 10 or step == self.total:
            self._last_plain = now
            eta = (self.total - step) * elapsed / max(step, 1)
            if self.max_seconds is not None:
                eta = min(eta, max(0.0, self.max_seconds - elapsed))
            print(
                f"step {step}/{self.total}  loss {loss_text}  {tokens_per_s:,.0f} tok/s  "
                f"elapsed {elapsed:.0f}s  ETA {eta:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.console.print(message, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
