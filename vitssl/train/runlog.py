"""Where a run reports: ``metrics.jsonl``, a progress bar or plain lines, TensorBoard."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` (a torn last line from a killed run is skipped)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def truncate_metrics(run_dir: str | Path, last_step: int) -> None:
    """Drop records after ``last_step`` (steps a killed run logged past its checkpoint)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)


class RunLog:
    """Per-step records to ``metrics.jsonl`` (+ TensorBoard) and progress on stderr (on a
    terminal a tqdm bar, else a line every ``log_every`` steps); only rank 0 is enabled."""

    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int, log_every: int,
                 tensorboard: bool = False, enabled: bool = True) -> None:
        self.enabled = enabled
        self.total, self.start, self.log_every = total_steps, start_step, max(1, log_every)
        self.started = time.perf_counter()
        self.bar = self.tb = self.file = None
        if not enabled:
            return
        self.file = open(Path(run_dir) / METRICS, "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except ImportError:
                print("warning: log.tensorboard=true but tensorboard is not installed "
                      "(pip install tensorboard); continuing without it", file=sys.stderr)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="pretrain",
                            unit="step", dynamic_ncols=True, file=sys.stderr)

    def log(self, record: dict[str, Any], show: bool = False) -> None:
        """Write a step record; print it at the log cadence, the last step, or ``show``."""
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record["step"]
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            rank = {"rankme": f"{record['rankme']:.1f}"} if "rankme" in record else {}
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", **rank,
                                 img_s=f"{record.get('images_per_s', 0):.0f}")
        elif step % self.log_every == 0 or step == self.total or show:
            done = step - self.start
            elapsed = time.perf_counter() - self.started
            eta = elapsed / max(1, done) * (self.total - step)
            extras = "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                               if k not in ("step", "loss", "lr", "images_per_s")
                               and isinstance(v, float))
            print(f"step {step}/{self.total}  loss {record['loss']:.4f}  {extras}  "
                  f"lr {record['lr']:.3g}  {record.get('images_per_s', 0):.0f} img/s  "
                  f"eta {timedelta(seconds=int(max(0, eta)))}", file=sys.stderr, flush=True)

    def event(self, record: dict[str, Any], text: str) -> None:
        """Write a record that is not a step's (an alarm, a rollback) and print ``text``."""
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        self.message(text)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        for part in (self.bar, self.tb, self.file):
            if part is not None:
                part.close()
