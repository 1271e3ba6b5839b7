"""Typed run configuration: defaults <- YAML file <- ``--set key=value`` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitssl.errors import VitsslError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    depth: int | None = None  # override the variant's layer count (small experiments)
    # "auto" (the objective's own: sincos for mae, else learned) | "learned" | "sincos"
    # (fixed 2-D sin-cos, as MAE's encoder)
    pos_embed: str = "auto"


@dataclass
class DataConfig:
    spec: str = "builtin:digits"
    split: str = "train"
    # "auto" (vitssl.data.pipeline.resolve_num_workers) or a count; 0: the main process
    num_workers: int | str = "auto"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Augmentation: None takes the dataset's own (vitssl.data.augment); a value wins.
    crop_scale: tuple[float, float] | None = None
    hflip: bool | None = None
    augment: bool | None = None
    shuffle_buffer: int = 1000
    on_error: str = "skip"  # "skip" | "raise"
    crop_ratio: tuple[float, float] | None = None  # aspect range of the random resized crop
    translate: float | None = None  # largest random shift after the crop, fraction of the side
    color: bool | None = None  # colour operations in self-supervised views (vitssl.data.views)
    resampled: bool | None = None  # wds: draw shards with replacement (None: when world_size > 1)
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


@dataclass
class LogConfig:
    tensorboard: bool = False


def _summary_evaluators() -> dict[str, Any]:
    """The default run summary: the paper's fine-tuning gain, then few-shot on frozen features."""
    return {
        "finetune": {"compare": ["pretrained", "random_init"], "per_class": 10, "draws": 3,
                     "steps": 100, "batch_size": 32},
        "few-shot": {"compare": ["pretrained", "random_init", "raw_pixels"],
                     "shots": [5, 10, 25], "seeds": 3, "features": "pooled"},
    }


@dataclass
class SummaryEvalConfig:
    """The evaluation printed at the end of a pretraining run (vitssl.train.summary)."""

    enabled: bool = True
    data: str | None = None  # None: the pretraining data (builtin:digits for wds: streams)
    # seeded subsets of larger splits, so the summary stays minutes on a laptop (null: all)
    max_train: int | None = 10_000
    max_test: int | None = 2_000
    # evaluator name -> options (+ compare / per_class / draws); null skips one
    evaluators: dict[str, Any] = field(default_factory=_summary_evaluators)


def image_hw(size: Any) -> tuple[int, int]:
    """``model.image_size`` (an int, or [height, width]) as (height, width); checked."""
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if (len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                  for v in pair)):
        raise VitsslError(f"model.image_size must be a positive int or [height, width] of "
                          f"positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


def image_size_text(size: Any) -> str:
    """``32`` -> ``"32px"``, ``(16, 24)`` -> ``"16x24px"`` (height x width)."""
    h, w = image_hw(size)
    return f"{h}px" if h == w else f"{h}x{w}px"


def _default_run_model() -> ModelConfig:
    """The default run's encoder: Ti/4 cut to 4 layers at 16 px (minutes on a laptop CPU).

    Mean pooling: masked-patch prediction trains the patch tokens, never the
    class token, so the pooled feature a fine-tune or probe reads is their mean
    (then a LayerNorm, timm's global-average-pooling convention).
    """
    return ModelConfig(image_size=16, depth=4, pool="mean", fc_norm=True)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=_default_run_model)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    summary_eval: SummaryEvalConfig = field(default_factory=SummaryEvalConfig)
    out: str | None = None


def _keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out.append(key)
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(_keys(hints[f.name], key + "."))
    return out


def _unknown_key(key: str) -> VitsslError:
    close = difflib.get_close_matches(key, _keys(Config), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return VitsslError(f"unknown config key '{key}'{hint}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check and convert a parsed value to the field's declared type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except VitsslError as exc:
                errors.append(str(exc))
        raise VitsslError(errors[0] if errors else f"bad value for '{key}': {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            value = [yaml.safe_load(v) for v in value]
        if not isinstance(value, (list, tuple)):
            value = [value]
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise VitsslError(f"'{key}' needs {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise VitsslError(f"'{key}' needs a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise VitsslError(f"'{key}' needs true or false, got {value!r}")
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and value is not None and not isinstance(value, (dict, list)):
        return str(value)
    raise VitsslError(f"'{key}' needs a {getattr(hint, '__name__', hint)}, got {value!r}")


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
            setattr(obj, name, _coerce(value, hints[name], key))


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=1"`` -> (["a", "b"], 1), the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise VitsslError(f"bad --set '{item}': expected key=value, e.g. train.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {path[-1]: value}
    for part in reversed(path[:-1]):
        out = {part: out}
    return out


def _merge_into_dict_field(cfg: Config, path: list[str], value: Any) -> bool:
    """``objective.options.x=1`` style keys extend a free-form mapping field."""
    obj: Any = cfg
    for depth, part in enumerate(path):
        if isinstance(obj, dict):
            target = obj
            for sub in path[depth:-1]:
                target = target.setdefault(sub, {})
            target[path[-1]] = value
            return True
        if not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return False


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


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Build a config from defaults, then a YAML file, then ``key=value`` overrides."""
    cfg = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise VitsslError(f"config file not found: {p}")
        _apply(cfg, read_yaml_mapping(p, "config file"))
    for item in overrides:
        keys, value = parse_override(item)
        if not _merge_into_dict_field(cfg, keys, value):
            _apply(cfg, _nest(keys, value))
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
    cfg = Config()
    _apply(cfg, data)
    return cfg
