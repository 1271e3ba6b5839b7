"""The monitor: label-free health of the exported encoder every ``monitor.every`` steps, an
optional k-NN probe, and alarms that say what to change (docs/training.md, "Monitor").

It only reads: the features come from the held-out images in eval mode without gradients,
under a forked RNG, so a run trains exactly as it would without it. Its values join the step
record of the check (``metrics.jsonl``, TensorBoard, the progress line); its state is those
records, so a resumed run checks and alarms as an uninterrupted one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from vitssl.config import Config
from vitssl.data.pipeline import data_info
from vitssl.data.source import parse_spec
from vitssl.data.tasks import Task, run_task
from vitssl.errors import VitsslError
from vitssl.eval.features import extract_features
from vitssl.train import alarms, distributed
from vitssl.train.health import health, held_out_images, monitor_every
from vitssl.train.runlog import RunLog

PROBE_K = 20
ON_ALARM = ("warn", "stop")


def check_monitor(cfg: Config) -> None:
    """Refuse, in one line, monitor settings no run can use."""
    mc = cfg.monitor  # its numbers: vitssl.config_values
    if mc.on_alarm not in ON_ALARM:
        raise VitsslError(f"unknown monitor.on_alarm '{mc.on_alarm}'; accepted: "
                          f"{', '.join(ON_ALARM)}")
    if mc.probe not in ("auto", "none"):
        parse_spec(mc.probe)  # an unknown kind is a one-line error now


def probe_task(cfg: Config) -> Task | None:
    """The probe's labelled task (None: no probe); refuses a spec without labels. ``auto``
    probes the pretraining data where it is labelled and has a test split, else nothing."""
    spec = cfg.monitor.probe
    if spec == "none":
        return None
    if spec == "auto":
        if parse_spec(cfg.data.spec).source.streams or not data_info(cfg.data).labelled:
            return None
        spec = cfg.data.spec
    try:
        return run_task(spec, cfg.model.image_size, cfg.data, cfg.model.in_chans)
    except VitsslError as exc:
        if cfg.monitor.probe == "auto":  # e.g. a folder with no test split
            return None
        raise VitsslError(f"monitor.probe={spec}: {exc} (or monitor.probe=none)") from None


@dataclass
class Monitor:
    """A run's health checks and the records they read (rank-identical on every rank)."""

    cfg: Config
    held_out: TensorDataset
    probe: Task | None
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    width: int = 0  # the features' width, known after the first check

    @property
    def every(self) -> int:
        return monitor_every(self.cfg)

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.cfg.train.steps

    def measure(self, encoder: nn.Module, step: int, device: torch.device) -> dict[str, float]:
        """Health of ``encoder`` on the held-out images and, when due, the probe."""
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            features = extract_features(encoder, self.held_out, batch_size=256,
                                        show_progress=False)
            out = health(features.x)
            self.width = features.x.shape[1]
            number = len(alarms.checks(self.records)) + 1
            last = step == self.cfg.train.steps
            if self.probe is not None and (number % self.cfg.monitor.probe_every == 0 or last):
                out.update(self._probe(encoder))
        self.seconds += time.perf_counter() - started
        return out

    def measure_on_main(self, encoder: nn.Module | None, step: int,
                        ctx: distributed.Context) -> dict[str, float]:
        """:meth:`measure` on rank 0 (``encoder`` is None elsewhere), its values on every
        rank, so every rank raises the same alarms without repeating the check."""
        out = self.measure(encoder, step, ctx.device) if encoder is not None else {}
        out, self.width = distributed.broadcast((out, self.width), ctx)
        return out

    def _probe(self, encoder: nn.Module) -> dict[str, float]:
        from vitssl.eval.run import build_evaluator

        mc = self.cfg.monitor
        knn = build_evaluator("knn", {"k": PROBE_K, "max_train": mc.probe_train,
                                      "max_test": mc.probe_test, "progress": False},
                              "monitor.probe: ")
        return {f"probe_{k}": v for k, v in knn.run(encoder, self.probe).items()}

    def review(self, logged: list[dict[str, Any]], step: int, log: RunLog) -> bool:
        """Take in the records just logged; at a check, raise (log and print) new alarms.
        Returns whether the run should stop (``monitor.on_alarm=stop``)."""
        self.records.extend(logged)
        if not logged or "rankme" not in logged[-1]:
            return False
        chance = 100.0 / self.probe.num_classes if self.probe is not None else None
        found = alarms.raised(self.records, alarms.Context(self.cfg.monitor, self.width, chance))
        for name, message in found:
            record = {"step": step, "alarm": name, "message": message}
            self.records.append(record)
            log.event(record, f"alarm at step {step} ({name}): {message}")
        return bool(found) and self.cfg.monitor.on_alarm == "stop"


def build_monitor(cfg: Config, records: list[dict[str, Any]], log: RunLog) -> Monitor | None:
    """The run's monitor (None when off), its records those of the run so far."""
    if not monitor_every(cfg):
        return None
    with torch.random.fork_rng(devices=[]):
        held_out, where = held_out_images(cfg)
        probe = probe_task(cfg)
    mc = cfg.monitor
    probing = (f"; k-NN probe (k={PROBE_K}) on {probe.name} ({mc.probe_train} train / "
               f"{mc.probe_test} test) every {mc.probe_every} checks") if probe else ""
    log.message(f"monitor: RankMe and feature spread every {monitor_every(cfg)} steps on "
                f"{where}{probing}")
    return Monitor(cfg, held_out, probe, list(records))
