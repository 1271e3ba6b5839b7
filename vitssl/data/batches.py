"""Deterministic pretraining batches from a map-style dataset.

Batch ``step`` is a pure function of (seed, step): samples follow a per-epoch
permutation and augmentation runs under an RNG seeded from (seed, step, rank)
or, with ``seed_per_sample`` (objective views), from the sample's position in
the global stream, so a resumed run sees exactly the batches of an
uninterrupted one on any number of ranks and workers. An unreadable sample
(:class:`~vitssl.data.decode.CorruptImage`) is replaced by the next readable
index and counted, or is fatal with ``on_error="raise"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from vitssl.data.decode import CorruptImage, SkipLog, log
from vitssl.data.transforms import normalize, to_float
from vitssl.errors import VitsslError
from vitssl.seeds import batch_seed, sample_seeds


def stack_outputs(outputs: list, mean: tuple[float, ...],
                  std: tuple[float, ...]) -> dict[str, Any]:
    """One batch's transform outputs -> its image entries (finished by :func:`counted`).

    A transform returns a (C, S, S) tensor — uint8 (kept compact as
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



def tail_size(requested: int, size: int) -> int:
    """How many of a dataset's last ``size`` items to keep out of training when ``requested``:
    at most a quarter of them, so a small dataset still trains on most of its images."""
    return min(requested, size // 4)

class StepBatches(Dataset):
    """Item ``step`` is this rank's share of global batch ``step`` as a batch dict.

    ``transform`` maps an image to a (C, S, S) tensor (float in [0, 1], or uint8)
    or to a dict of view stacks; see :func:`stack_outputs`.
    """

    def __init__(self, dataset: Dataset, transform: Callable, *, batch_size: int, seed: int,
                 mean: tuple[float, ...], std: tuple[float, ...], rank: int = 0,
                 world_size: int = 1, num_steps: int, on_error: str = "skip",
                 seed_per_sample: bool = False, held_out: int = 0) -> None:
        self.dataset, self.transform, self.seed_per_sample = dataset, transform, seed_per_sample
        # the dataset's last items, never drawn (the monitor's)
        self.held_out = tail_size(held_out, len(dataset))
        self.batch_size, self.rank, self.num_steps = batch_size, rank, num_steps
        self.mean, self.std, self.seed = tuple(mean), tuple(std), seed
        self.global_batch, self.on_error = batch_size * world_size, on_error
        SkipLog(on_error)  # validates the setting up front
        self.encoded = bool(getattr(transform, "takes_encoded", False)
                            and hasattr(dataset, "encoded"))

    def __len__(self) -> int:
        return self.num_steps

    def indices(self, step: int) -> list[int]:
        """Dataset indices of global batch ``step`` (wrapping over per-epoch permutations)."""
        size, start, out = len(self.dataset) - self.held_out, step * self.global_batch, []
        while len(out) < self.global_batch:
            epoch, offset = divmod(start + len(out), size)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            take = min(self.global_batch - len(out), size - offset)
            out.extend(torch.randperm(size, generator=g).tolist()[offset:offset + take])
        return out

    def __getitem__(self, step: int) -> dict[str, Any]:
        mine = self.indices(step)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        errors = SkipLog(self.on_error, carry=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(batch_seed(self.seed, step, self.rank))
            samples = [self._read(i, errors) for i in mine]
            first = step * self.global_batch + self.rank * self.batch_size
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
        if all(label >= 0 for label in labels):
            batch["label"] = torch.tensor(labels, dtype=torch.long)
        return batch

    def _read(self, index: int, errors: SkipLog, tried: int = 0) -> tuple[Any, int, int, int]:
        """(image, label, dataset index read, indices tried) from ``index`` on."""
        size = len(self.dataset) - self.held_out
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


def counted(batches: Iterator[dict], owner: Any, mean: tuple[float, ...],
            std: tuple[float, ...], device: torch.device | None = None) -> Iterator[dict]:
    """Finish each batch, moving its ``"_skipped"`` count to ``owner``.

    Batches cross from DataLoader workers as uint8 (a quarter of the bytes) and get
    ``"pixels"`` in [0, 1] and a normalised ``"image"`` (or views) here, on ``device``
    when one is given. Carried skip messages are logged here; errors raised in
    workers come out as one line.
    """
    def finish(pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8:
            return pixels
        return to_float(pixels if device is None else pixels.to(device, non_blocking=True))

    try:
        for batch in batches:
            owner.skipped += int(batch.pop("_skipped", 0))
            for message in batch.pop("_skip_messages", ()):
                log.warning("skipping sample: %s", message)
            if "pixels_uint8" in batch:
                batch["pixels"] = finish(batch.pop("pixels_uint8"))
                batch["image"] = normalize(batch["pixels"], mean, std)
            if "view_pixels" in batch:
                batch["view_pixels"] = {k: finish(v) for k, v in batch["view_pixels"].items()}
                batch["views"] = {k: normalize(v, mean, std)
                                  for k, v in batch["view_pixels"].items()}
            yield batch
    except VitsslError as exc:
        # Raised in a DataLoader worker, it arrives with the worker's traceback in its
        # message; its last line is "module.ErrorType: message".
        lines = [line for line in str(exc).splitlines() if line.strip()]
        if len(lines) <= 1:
            raise
        raise VitsslError(lines[-1].split(": ", 1)[-1]) from None
