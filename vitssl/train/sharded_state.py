"""Sharded tensors on disk with ``torch.distributed.checkpoint`` (DCP), read without pickle risk.

A reader of any world size gets its own slices back. DCP's index, a pickle, is read with an
unpickler that builds only DCP's metadata records, sizes and dtypes; non-tensor entries are refused.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

from vitssl.errors import VitsslError

_DCP_MODULE = "torch.distributed.checkpoint."
_PLAIN = {("torch.serialization", "_get_layout"),  # a torch.layout from its name
          ("collections", "OrderedDict"),
          *(("pathlib", n) for n in ("Path", "PosixPath", "PurePosixPath", "WindowsPath",
                                     "PureWindowsPath")),  # the checkpoint id DCP records
          *(("builtins", n) for n in ("set", "frozenset", "slice", "tuple", "list", "dict"))}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP metadata records, torch sizes, dtypes, layouts and paths; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN:
            return super().find_class(module, name)
        if module.startswith(_DCP_MODULE) and "." not in name:
            obj = super().find_class(module, name)
            if isinstance(obj, type) and (dataclasses.is_dataclass(obj) or
                                          issubclass(obj, enum.Enum)):
                return obj
        elif module == "torch" and "." not in name:
            obj = getattr(torch, name, None)
            if obj is torch.Size or isinstance(obj, (torch.dtype, torch.layout,
                                                    torch.memory_format)):
                return obj
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint index")


class SafeReader(FileSystemReader):
    """A DCP file reader whose index may hold only tensor entries."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            metadata = _MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
        except (OSError, pickle.UnpicklingError, AttributeError, EOFError) as exc:
            raise VitsslError(f"cannot read sharded checkpoint index {path}: {exc}") from None
        if not isinstance(metadata, Metadata):
            raise VitsslError(f"{path} is not a sharded checkpoint index")
        bad = [k for k, v in metadata.state_dict_metadata.items()
               if not isinstance(v, TensorStorageMetadata)]
        if bad:
            raise VitsslError(f"sharded checkpoint {path.parent} holds non-tensor entries "
                              f"{bad[:3]}; refusing to unpickle them")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def save_tensors(tensors: dict[str, torch.Tensor], directory: str | Path) -> None:
    """Write this rank's (possibly sharded) tensors; collective over the process group."""
    with warnings.catch_warnings():  # one process is a supported case, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(dict(tensors), checkpoint_id=str(directory))


def load_tensors(template: dict[str, torch.Tensor], directory: str | Path) -> None:
    """Fill ``template``'s tensors in place from ``directory``, resharding as needed.

    Entries the checkpoint does not hold are dropped from ``template`` (the
    optimizer state of a parameter that never had a gradient).
    """
    if not (Path(directory) / ".metadata").is_file():
        raise VitsslError(f"sharded checkpoint '{directory}' is missing its .metadata index")
    # a refusal is a one-line error, not DCP's
    saved = SafeReader(str(directory)).read_metadata().state_dict_metadata
    for name in [k for k in template if k not in saved]:
        del template[name]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(template, storage_reader=SafeReader(str(directory)))
