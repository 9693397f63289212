"""The efficiency policy: one validated, frozen, YAML-serialisable object holding every knob (DESIGN §3)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from autotune.errors import PolicyError, collect

if TYPE_CHECKING:
    import torch

OptimizerName = Literal["sgd", "adam", "adamw", "rmsprop", "adagrad"]
ScheduleName = Literal["constant", "step", "cosine", "onecycle"]
Precision = Literal["fp32", "bf16", "fp16", "int8"]
PruneMethod = Literal["none", "magnitude", "structured"]
PruneSchedule = Literal["oneshot", "gradual"]

# Which optimizer-specific settings each optimizer accepts; anything else set explicitly is refused.
_OPTIMIZER_EXTRAS: dict[str, set[str]] = {
    "sgd": {"momentum", "nesterov"},
    "rmsprop": {"momentum"},
    "adam": {"betas"},
    "adamw": {"betas"},
    "adagrad": set(),
}
_SCHEDULE_EXTRAS: dict[str, set[str]] = {
    "constant": set(),
    "step": {"step_size", "gamma"},
    "cosine": {"min_lr_ratio"},
    "onecycle": {"pct_start"},
}


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class OptimizerConfig(_Frozen):
    """torch.optim settings; optimizer-specific ones stay None unless that optimizer uses them."""

    name: OptimizerName = "adamw"
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)
    momentum: float | None = Field(None, ge=0, lt=1)
    nesterov: bool | None = None
    betas: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _check(self) -> OptimizerConfig:
        allowed = _OPTIMIZER_EXTRAS[self.name]
        for key in ("momentum", "nesterov", "betas"):
            if getattr(self, key) is not None and key not in allowed:
                raise ValueError(
                    f"optimizer.{key} is not used by optimizer.name={self.name!r} "
                    f"(it applies to {sorted(n for n, s in _OPTIMIZER_EXTRAS.items() if key in s)})"
                )
        if self.betas is not None and not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optimizer.betas must lie in [0, 1), but got {self.betas}")
        if self.nesterov and not (self.momentum or 0) > 0:
            raise ValueError("optimizer.nesterov=true needs optimizer.momentum > 0")
        return self


class ScheduleConfig(_Frozen):
    """Learning-rate schedule, stepped once per optimizer step; linear warm-up combines with any of them."""

    name: ScheduleName = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int | None = Field(None, ge=1, description="step: epochs between decays")
    gamma: float | None = Field(None, gt=0, le=1, description="step: decay factor")
    min_lr_ratio: float | None = Field(None, ge=0, le=1, description="cosine: final lr / lr")
    pct_start: float | None = Field(None, gt=0, lt=1, description="onecycle: share of rise")

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        allowed = _SCHEDULE_EXTRAS[self.name]
        for key in ("step_size", "gamma", "min_lr_ratio", "pct_start"):
            if getattr(self, key) is not None and key not in allowed:
                raise ValueError(f"schedule.{key} is not used by schedule.name={self.name!r}")
        return self


class PruneConfig(_Frozen):
    """Pruning: global magnitude (torch.nn.utils.prune) or structured channels (torch-pruning)."""

    method: PruneMethod = "none"
    ratio: float = Field(0.0, ge=0, le=0.95)
    schedule: PruneSchedule = "oneshot"
    # oneshot: prune after this many epochs (None: a quarter of them, so that most of the training —
    # and of its FLOPs — runs on the pruned model); gradual: ramp from start to end.
    at_epoch: int | None = Field(None, ge=0)
    start_epoch: int | None = Field(None, ge=0)
    end_epoch: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> PruneConfig:
        if self.method == "none" and self.ratio > 0:
            raise ValueError(
                f"prune.ratio={self.ratio} has no effect while prune.method='none'; "
                "set prune.method to 'magnitude' or 'structured'"
            )
        if self.method != "none" and self.ratio == 0:
            raise ValueError(f"prune.method={self.method!r} needs prune.ratio > 0")
        if self.schedule == "oneshot" and (self.start_epoch is not None or self.end_epoch is not None):
            raise ValueError("prune.start_epoch/end_epoch apply to prune.schedule='gradual' only")
        if self.schedule == "gradual" and self.at_epoch is not None:
            raise ValueError("prune.at_epoch applies to prune.schedule='oneshot' only")
        return self


class Policy(_Frozen):
    """Everything that is searched, recorded and exported for one training run."""

    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    batch_size: int = Field(64, ge=1, le=65536)
    grad_accum: int = Field(1, ge=1, le=1024)
    grad_clip: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    precision: Precision = "fp32"
    prune: PruneConfig = PruneConfig()
    epochs: int = Field(10, ge=1, le=100000)
    seed: int = Field(0, ge=0)
    model: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Policy:
        if self.schedule.warmup_epochs >= self.epochs:
            raise ValueError(
                f"schedule.warmup_epochs={self.schedule.warmup_epochs} must be < epochs={self.epochs}"
            )
        p = self.prune
        if p.method != "none":
            if p.schedule == "oneshot" and p.at_epoch is not None and p.at_epoch >= self.epochs:
                raise ValueError(f"prune.at_epoch={p.at_epoch} must be < epochs={self.epochs}")
            if p.schedule == "gradual":
                start, end = self.gradual_window()
                if not 0 <= start < end <= self.epochs:
                    raise ValueError(
                        f"gradual pruning needs 0 <= prune.start_epoch < prune.end_epoch <= epochs, "
                        f"but got start={start}, end={end}, epochs={self.epochs}"
                    )
        return self

    # ---- derived settings -------------------------------------------------------------------
    def prune_epoch(self) -> int:
        """The epoch after which one-shot pruning happens (the remaining epochs fine-tune)."""
        return self.prune.at_epoch if self.prune.at_epoch is not None else self.epochs // 4

    def gradual_window(self) -> tuple[int, int]:
        """Epochs [start, end) over which gradual pruning ramps to its ratio."""
        start = self.prune.start_epoch if self.prune.start_epoch is not None else 0
        end = self.prune.end_epoch if self.prune.end_epoch is not None else max(1, (3 * self.epochs) // 4)
        return start, end

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accum

    # ---- torch helpers for people with their own loop (DESIGN §2, escape hatch) ---------------
    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        from autotune.knobs.optim import make_optimizer

        return make_optimizer(self, model.parameters())

    def make_scheduler(
        self, optimizer: torch.optim.Optimizer, steps_per_epoch: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        from autotune.knobs.optim import make_scheduler

        return make_scheduler(self, optimizer, steps_per_epoch)

    def autocast(self, device: str | torch.device = "cpu") -> contextlib.AbstractContextManager:
        from autotune.knobs.precision import autocast

        return autocast(self.precision, device)

    def prune_now(self, model: torch.nn.Module, example_inputs: Any, ratio: float | None = None) -> Any:
        """Prune `model` to `ratio` (default: the policy's ratio) with the policy's method."""
        from autotune.knobs.pruning import Pruner

        pruner = Pruner(self, model, example_inputs)
        return pruner.prune_to(self.prune.ratio if ratio is None else ratio)

    # ---- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def flat(self) -> dict[str, Any]:
        """Dotted keys (optimizer.lr, model.width, …) for MLflow params and search spaces."""
        return dict(_flatten(self.to_dict()))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: Mapping[str, Any], *, source: str = "--set") -> Policy:
        """A new policy with dotted-key overrides applied (values already typed, or strings to parse)."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, _parse_scalar(value) if isinstance(value, str) else value, source)
        return Policy.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "policy") -> Policy:
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            collect(
                [_describe(err) for err in exc.errors()],
                PolicyError,
                f"Invalid policy in {source}",
                "correct the keys named above; valid knobs are listed in README.md (section 'Policy knobs').",
            )
            raise  # pragma: no cover - collect always raises here

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], *, source: str = "policy") -> Policy:
        return cls().with_overrides(flat, source=source) if flat else cls()


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{path}.")
        elif isinstance(value, Mapping):
            continue
        else:
            yield path, value


def _set_dotted(data: dict[str, Any], key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    if not all(parts):
        raise PolicyError(f"Invalid key {key!r} in {source}.", fix="use dotted keys such as prune.ratio.")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise PolicyError(
                f"Invalid key {key!r} in {source}: {part!r} is a value, not a section.",
                fix="check the key against README.md (section 'Policy knobs').",
            )
        node = child
    node[parts[-1]] = value


def _parse_scalar(text: str) -> Any:
    """Type a --set value the way YAML would ("0.5" → 0.5, "true" → True, "[0.9, 0.99]" → list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _describe(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        return f"unknown key {loc!r}"
    got = err.get("input")
    shown = "" if isinstance(got, Mapping) or got is None else f" (got {got!r})"
    return f"{loc}: {msg}{shown}" if loc else f"{msg}{shown}"


def load_policy(path: str | Path) -> Policy:
    """Read a policy YAML file (a bare policy or an exported file with a `policy:` section)."""
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"Policy file {path} does not exist.", fix="pass the path of a policy YAML file.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PolicyError(
            f"Policy file {path} is not valid YAML: {str(exc).splitlines()[0]}",
            fix="fix the YAML syntax (a policy is a mapping such as `optimizer: {name: sgd}`).",
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(
            f"Policy file {path} holds a {type(data).__name__}, not a mapping.",
            fix="write the policy as a YAML mapping of knobs.",
        )
    if "policy" in data and isinstance(data["policy"], dict):
        data = data["policy"]
    return Policy.from_dict(data, source=str(path))
