"""Typed run configuration: defaults <- YAML file <- ``--set key=value`` overrides.

The dataclasses describe the architecture (Ti/4: full depth, 32 px, class token); the
laptop demo, run when no file is given, is the shipped recipe ``configs/default.yaml``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitssl.coerce import coerce
from vitssl.config_values import check_values
from vitssl.errors import VitsslError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NON_FINITE = ("nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")


@dataclass
class ModelConfig:
    name: str = "Ti/4"  # variant/patch, e.g. "B/16", "Ti/4"
    stem: str = "patch"
    stem_options: dict[str, Any] = field(default_factory=dict)
    image_size: int | tuple[int, int] = 32  # side, or [height, width] (see image_hw)
    pool: str = "token"  # "token" (cls token) or "mean"
    class_token: bool = True
    fc_norm: bool = False  # LayerNorm after pooling instead of on the tokens (timm "avg")
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    attention: str = "auto"  # "auto" | "triton" | "sdpa" | "reference"
    depth: int | None = None  # None: the variant's layer count; a number cuts it
    pos_embed: str = "auto"  # the objective's (sincos for mae) | "learned" | "sincos" (fixed 2-D)
    init: str | None = None  # start the encoder from these weights (vitssl, timm, transformers)
    init_sha256: str | None = None  # their content hash: recorded by the run, checked when set
    in_chans: int | str = "auto"  # image channels; "auto": the data's (vitssl.data.channels)


@dataclass
class DataConfig:
    spec: str = "builtin:digits"
    split: str = "train"
    num_workers: int | str = "auto"  # or a count; 0: the main process
    # Per channel; "auto": estimated from the data; None: ImageNet's for 8-bit RGB data, else
    # "auto" (a run records the numbers it used).
    mean: tuple[float, ...] | str | None = None
    std: tuple[float, ...] | str | None = None
    channels: tuple[int, ...] | None = None  # bands kept, in order; None: all
    # Augmentation: None takes the dataset's own (vitssl.data.source); a value wins.
    crop_scale: tuple[float, float] | None = None
    hflip: bool | None = None
    augment: bool | None = None
    on_error: str = "skip"  # "skip" | "raise"
    crop_ratio: tuple[float, float] | None = None  # aspect range of the random resized crop
    translate: float | None = None  # largest random shift after the crop, fraction of the side
    color: bool | None = None  # colour operations in self-supervised views (vitssl.ssl.views)
    options: dict[str, Any] = field(default_factory=dict)  # to the source (builtin: factory)


@dataclass
class ObjectiveConfig:
    name: str = "masked-patch"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    steps: int = 500
    batch_size: int = 64
    accum_steps: int = 1
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 30
    schedule: str = "cosine"  # "cosine" | "linear"
    grad_clip: float = 1.0
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16"
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    strategy: str = "ddp"  # "ddp" | "fsdp" (under torchrun; one process trains unsharded)
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    compile: bool = False  # torch.compile the objective's forward
    on_nonfinite: str = "stop"  # "stop" (exit, resumable) | "rollback" (newest checkpoint, lr/2)
    max_rollbacks: int = 3  # rollbacks a run may take before it stops


@dataclass
class MonitorConfig:
    """Health checks while a run trains (vitssl.train.monitor; docs/training.md)."""

    enabled: bool = True
    every: int | None = None  # steps between checks (and the last); None: steps // 20
    images: int = 128  # the held-out batch RankMe and the feature spread are measured on
    probe: str = "auto"  # k-NN probe data: "auto" (the pretraining data if labelled), "none", SPEC
    probe_every: int = 4  # checks between probes (the last check always probes)
    probe_train: int = 256  # the probe's seeded subsets (vitssl eval --evaluator knn
    probe_test: int = 128  #   --set max_train=... --set max_test=... gives the same number)
    on_alarm: str = "warn"  # "warn" | "stop"
    min_rankme_ratio: float = 0.05  # collapse: RankMe / min(images, width) below this
    min_spread: float = 0.01  # collapse: feature_std * sqrt(width) below this
    max_entropy_ratio: float = 0.97  # a teacher's entropy / ln K at or above this ...
    patience: int = 3  # ... on average over this many checks; also the loss-stuck window


@dataclass
class LogConfig:
    tensorboard: bool = False


SUMMARY_ENTRY_KEYS = ("compare", "per_class", "draws", "options")


@dataclass
class SummaryEvalConfig:
    """The evaluation printed at the end of a pretraining run (vitssl.train.summary)."""

    enabled: bool = True
    data: str | None = None  # None: the pretraining data (builtin:digits for wds: streams)
    # seeded subsets of larger splits, so the summary stays minutes on a laptop (null: all)
    max_train: int | None = 10_000
    max_test: int | None = 2_000
    # evaluator name -> {compare, per_class, draws, options} (vitssl.train.summary); null
    # skips one. The default: the paper's fine-tuning gain, then few-shot on frozen features.
    evaluators: dict[str, Any] = field(default_factory=lambda: {
        "finetune": {"compare": ["pretrained", "random_init"], "per_class": 10, "draws": 3,
                     "options": {"steps": 100, "batch_size": 32}},
        "few-shot": {"compare": ["pretrained", "random_init", "raw_pixels"],
                     "options": {"shots": [5, 10, 25], "seeds": 3, "features": "pooled"}}})


def normalisation(data: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel: the recorded numbers, or ImageNet's where unset (RGB)."""
    if data.mean == "auto" or data.std == "auto":
        raise VitsslError("data.mean/std 'auto' are estimated when a run starts "
                          "(vitssl pretrain); give numbers here")
    return tuple(data.mean or IMAGENET_MEAN), tuple(data.std or IMAGENET_STD)


def image_hw(size: Any) -> tuple[int, int]:
    """``model.image_size`` (an int, or [height, width]) as (height, width); checked."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(type(v) is int and v > 0 for v in pair):
        raise VitsslError(f"model.image_size must be a positive int or [height, width] of "
                          f"positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


def image_size_text(size: Any) -> str:
    """``32`` -> ``"32px"``, ``(16, 24)`` -> ``"16x24px"`` (height x width)."""
    h, w = image_hw(size)
    return f"{h}px" if h == w else f"{h}x{w}px"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    summary_eval: SummaryEvalConfig = field(default_factory=SummaryEvalConfig)
    out: str | None = None


def _unknown_key(key: str) -> VitsslError:
    known = [*(f.name for f in dataclasses.fields(Config)), *flatten(to_dict(Config()))]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return VitsslError(f"unknown config key '{key}'{hint}")


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in hints:
            raise _unknown_key(key)
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise VitsslError(f"'{key}' is a section; give its keys, e.g. {key}.<name>=...")
            _apply(current, value, key + ".")
        else:
            setattr(obj, name, coerce(value, hints[name], key))


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=1"`` -> (["a", "b"], 1), the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise VitsslError(f"bad --set '{item}': expected key=value, e.g. train.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), _as_number(value)


def _as_number(value: Any) -> Any:
    """``nan``/``inf`` words (strings to YAML) as floats, at any depth, so the finite checks
    (vitssl.config_values) see them whatever option takes them."""
    if isinstance(value, list):
        return [_as_number(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_number(v) for k, v in value.items()}
    if isinstance(value, str) and value.strip().lower() in NON_FINITE:
        return float(value)
    return value


def _override(cfg: Config, path: list[str], value: Any) -> None:
    """Set one ``--set`` key; keys below a mapping field (``objective.options.x``) extend it."""
    obj: Any = cfg
    depth = 0
    while dataclasses.is_dataclass(obj) and depth < len(path) - 1 and hasattr(obj, path[depth]):
        obj, depth = getattr(obj, path[depth]), depth + 1
    if not isinstance(obj, dict):
        _apply(cfg, functools.reduce(lambda inner, key: {key: inner}, reversed(path), value))
        return
    for part in path[depth:-1]:
        obj = obj.setdefault(part, {})
    obj[path[-1]] = value


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file holding a mapping (empty file: ``{}``); one-line errors naming ``what``."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise VitsslError(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") \
            from None
    if not isinstance(data, dict):
        raise VitsslError(f"{what} {path} must hold a mapping at the top level")
    return data


def configs_dir() -> Path:
    """The folder of shipped recipes: ``vitssl/configs`` in a wheel, else the checkout's."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise VitsslError(f"no recipes found: neither {package / 'configs'} nor "
                      f"{package.parent / 'configs'} holds *.yaml files")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The defaults, then a YAML file (None: the laptop demo, ``configs/default.yaml``),
    then ``key=value`` overrides."""
    p = configs_dir() / "default.yaml" if path is None else Path(path)
    if not p.is_file():
        raise VitsslError(f"config file not found: {p}")
    cfg = config_from_dict(read_yaml_mapping(p, "config file"))  # a run's own, maybe older
    for item in overrides:
        _override(cfg, *parse_override(item))
    check_values(flatten(to_dict(cfg)))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict (tuples become lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_from_dict(data: dict[str, Any]) -> Config:
    """A config from a mapping (a recipe, a run's ``config.yaml``), older shapes upgraded."""
    cfg = Config()
    _apply(cfg, _upgraded(data))
    return cfg


def _upgraded(data: dict[str, Any]) -> dict[str, Any]:
    """Earlier shapes of a saved config in today's: a run that recorded ``data.mean`` but no
    ``model.in_chans`` (made before channels came from the data) was RGB: ``in_chans`` 3;
    the stream settings ``data.shuffle_buffer``
    and ``data.resampled`` in ``data.options`` (where set), summary entries' evaluator
    options under ``options``."""
    data = copy.deepcopy(data)
    section = data.get("data") or {}
    model = data.get("model")
    if isinstance(model, dict) and section.get("mean") is not None and "in_chans" not in model:
        model["in_chans"] = 3
    moved = {k: section.pop(k) for k in ("shuffle_buffer", "resampled") if k in section}
    moved = {k: v for k, v in moved.items() if v not in (None, 1000)}  # the defaults
    if moved:
        section["options"] = {**moved, **(section.get("options") or {})}
    entries = (data.get("summary_eval") or {}).get("evaluators") or {}
    for name, entry in entries.items():
        if isinstance(entry, dict) and "options" not in entry:
            own = {k: entry.pop(k) for k in list(entry) if k not in SUMMARY_ENTRY_KEYS}
            entries[name] = {**entry, "options": own}
    return data
