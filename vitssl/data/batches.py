"""Deterministic pretraining batches from a map-style dataset.

Batch ``step`` is a pure function of (seed, step): the sample order is a
per-epoch permutation of the dataset and augmentation runs under an RNG
seeded from (seed, step, rank) — or, with ``seed_per_sample`` (objective
views), from (seed, the sample's position in the global stream), so a sample
gets the same views on any number of ranks. A resumed run sees exactly the
batches of an uninterrupted one, with any number of workers.

An unreadable sample (:class:`~vitssl.data.decode.CorruptImage`) is replaced by
the next readable dataset index, counted in the batch's ``"_skipped"`` entry
and logged by the main process (:func:`counted`), or is fatal with
``on_error="raise"``. A transform that ``takes_encoded`` gets image files as
:class:`~vitssl.data.decode.EncodedImage` from a dataset that has
``encoded(index)``, so it decodes only as much as its crop needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from vitssl.data.decode import CorruptImage
from vitssl.data.skips import SkipLog, log
from vitssl.data.transforms import normalize, to_float
from vitssl.errors import VitsslError
from vitssl.seeds import batch_seed, sample_seeds


@dataclass
class BatchPlan:
    dataset_size: int
    global_batch: int
    seed: int

    def indices(self, step: int) -> list[int]:
        """Dataset indices of global batch ``step`` (wrapping over epochs)."""
        start = step * self.global_batch
        out: list[int] = []
        while len(out) < self.global_batch:
            epoch, offset = divmod(start + len(out), self.dataset_size)
            perm = self._permutation(epoch)
            take = min(self.global_batch - len(out), self.dataset_size - offset)
            out.extend(perm[offset:offset + take])
        return out

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_size, generator=g).tolist()


def stack_outputs(outputs: list, mean: tuple[float, ...],
                  std: tuple[float, ...]) -> dict[str, Any]:
    """One batch's transform outputs -> its image entries (finished by :func:`finish_batch`).

    A transform returns a (3, S, S) tensor — uint8 (kept compact as
    ``"pixels_uint8"``) or float in [0, 1] — or a dict of named view stacks
    (V, 3, S, S), stacked per name into ``"view_pixels"`` (B, V, 3, S, S).
    """
    if isinstance(outputs[0], dict):
        return {"view_pixels": {name: torch.stack([out[name] for out in outputs])
                                for name in outputs[0]}}
    pixels = torch.stack(outputs)
    if pixels.dtype == torch.uint8:
        return {"pixels_uint8": pixels}
    return {"pixels": pixels, "image": normalize(pixels, mean, std)}


def finish_batch(batch: dict[str, Any], mean: tuple[float, ...],
                 std: tuple[float, ...]) -> dict[str, Any]:
    """A compact batch -> ``"pixels"`` in [0, 1] and normalised ``"image"`` (or views).

    Batches cross from DataLoader workers as uint8 (a quarter of the bytes)
    and are finished in the main process.
    """
    if "pixels_uint8" in batch:
        pixels = to_float(batch.pop("pixels_uint8"))
        batch["pixels"] = pixels
        batch["image"] = normalize(pixels, mean, std)
    if "view_pixels" in batch:
        raw = batch["view_pixels"]
        batch["view_pixels"] = {name: to_float(v) if v.dtype == torch.uint8 else v
                                for name, v in raw.items()}
        batch["views"] = {name: normalize(v, mean, std)
                          for name, v in batch["view_pixels"].items()}
    return batch


class StepBatches(Dataset):
    """Item ``step`` is this rank's share of global batch ``step`` as a batch dict.

    ``transform`` maps an image to a (3, S, S) tensor (float in [0, 1], or uint8)
    or to a dict of view stacks; see :func:`stack_outputs`.
    """

    def __init__(self, dataset: Dataset, transform: Callable, *, batch_size: int, seed: int,
                 mean: tuple[float, ...], std: tuple[float, ...], rank: int = 0,
                 world_size: int = 1, num_steps: int, on_error: str = "skip",
                 seed_per_sample: bool = False) -> None:
        self.dataset, self.transform, self.seed_per_sample = dataset, transform, seed_per_sample
        self.batch_size, self.rank, self.num_steps = batch_size, rank, num_steps
        self.mean, self.std, self.seed = tuple(mean), tuple(std), seed
        self.plan = BatchPlan(len(dataset), batch_size * world_size, seed)
        self.on_error = on_error
        SkipLog(on_error)  # validates the setting up front
        self.encoded = bool(getattr(transform, "takes_encoded", False)
                            and hasattr(dataset, "encoded"))

    def __len__(self) -> int:
        return self.num_steps

    def __getitem__(self, step: int) -> dict[str, Any]:
        indices = self.plan.indices(step)
        mine = indices[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        errors = SkipLog(self.on_error, carry=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed(self.seed, step, self.rank))
            samples = [self._read(i, errors) for i in mine]
            first = step * self.plan.global_batch + self.rank * self.batch_size
            seeds = sample_seeds(self.seed, first, len(samples)).tolist() \
                if self.seed_per_sample else None
            outputs, labels = [], []
            for i, sample in enumerate(samples):
                if seeds is not None:
                    torch.manual_seed(seeds[i])
                output, label = self._transform(sample, errors)
                outputs.append(output)
                labels.append(int(label))
            batch = stack_outputs(outputs, self.mean, self.std)
        batch["_skipped"] = torch.tensor(errors.count)
        if errors.messages:
            batch["_skip_messages"] = errors.messages
        labels = torch.tensor(labels, dtype=torch.long)
        if bool((labels >= 0).all()):
            batch["label"] = labels
        return batch

    def _read(self, index: int, errors: SkipLog, tried: int = 0) -> tuple[Any, int, int, int]:
        """(image, label, dataset index read, indices tried) from ``index`` on."""
        size = len(self.dataset)
        for attempt in range(size - tried):
            where = (index + attempt) % size
            try:
                item = self.dataset.encoded(where) if self.encoded else self.dataset[where]
                return item[0], item[1], where, tried + attempt + 1
            except CorruptImage as exc:
                errors.skip(str(exc))
        raise CorruptImage(f"no readable sample among all {size} in the dataset")

    def _transform(self, sample: tuple[Any, int, int, int], errors: SkipLog) -> tuple[Any, int]:
        """The transform's output and label; a file that fails to decode here is replaced too.

        The replacement's transform starts from the same RNG state, as if the
        unreadable file had been skipped when it was read.
        """
        image, label, where, tried = sample
        state = torch.get_rng_state()
        while True:
            try:
                return self.transform(image), label
            except CorruptImage as exc:
                errors.skip(str(exc))
                torch.set_rng_state(state)
                image, label, where, tried = self._read(where + 1, errors, tried)


def loader_options(num_workers: int, pin_memory: bool = False) -> dict[str, Any]:
    """DataLoader keywords for a run's one loader of whole batches.

    With workers: persistent, and at least 4 batches in flight in all (2 per
    worker from 2 workers on), enough to ride out a slow batch.
    """
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=max(2, -(-4 // num_workers)))
    return options


def step_loader(batches: StepBatches, start_step: int = 0, num_workers: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A loader of batches ``start_step, start_step + 1, ...``: one pass over the run's steps."""
    steps = range(start_step, len(batches))
    return DataLoader(batches, batch_size=None, sampler=steps,
                      **loader_options(num_workers, pin_memory))


def counted(batches: Iterator[dict], owner: Any, mean: tuple[float, ...],
            std: tuple[float, ...], device: torch.device | None = None) -> Iterator[dict]:
    """Finish each batch, moving its ``"_skipped"`` count to ``owner.skipped``.

    A ``"_position"`` (streams) goes to ``owner.position.update``; carried skip
    messages are logged here. With a CUDA ``device`` the uint8 pixels are
    finished there. Errors raised in workers come out as one line.
    """
    try:
        for batch in batches:
            owner.skipped += int(batch.pop("_skipped", 0))
            for message in batch.pop("_skip_messages", ()):
                log.warning("skipping sample: %s", message)
            position = batch.pop("_position", None)
            if position is not None:
                owner.position.update(position)
            if device is not None and device.type == "cuda":
                batch = _compact_to(batch, device)
            yield finish_batch(batch, mean, std)
    except VitsslError as exc:
        # Raised in a DataLoader worker, it arrives with the worker's traceback in its
        # message; its last line is "module.ErrorType: message".
        lines = [line for line in str(exc).splitlines() if line.strip()]
        if len(lines) <= 1:
            raise
        raise VitsslError(lines[-1].split(": ", 1)[-1]) from None


def _compact_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The uint8 pixel entries of a batch on ``device``; everything else as it is."""
    if "pixels_uint8" in batch:
        batch["pixels_uint8"] = batch["pixels_uint8"].to(device, non_blocking=True)
    if "view_pixels" in batch:
        batch["view_pixels"] = {name: v.to(device, non_blocking=True) if v.dtype == torch.uint8
                                else v for name, v in batch["view_pixels"].items()}
    return batch
