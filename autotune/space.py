"""Search spaces: YAML file → validated Params → an Optuna define-by-run function (DESIGN §5)."""

from __future__ import annotations

import difflib
import functools
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from autotune.errors import PolicyError, SpaceError, collect
from autotune.policy import Policy

Kind = Literal["choice", "int", "uniform", "loguniform", "fixed"]

# Options each distribution accepts besides `when`; Optuna cannot step a log-scaled float, so
# loguniform takes none.
_OPTIONS: dict[str, tuple[str, ...]] = {
    "choice": (),
    "int": ("step", "log"),
    "uniform": ("step",),
    "loguniform": (),
    "fixed": (),
}
_FIX = (
    "correct the entries named above. Each key is a policy knob (dotted, e.g. optimizer.lr) or "
    "model.<name>; its value is a fixed value or one of {choice: [..]}, {int: [lo, hi]}, "
    "{uniform: [lo, hi]}, {loguniform: [lo, hi]}, {fixed: value}, with optional step, log "
    "(int only) and when: {earlier.key: value | [values]}. See search_spaces/default.yaml."
)

SHIPPED_SPACES = Path(__file__).parents[1] / "search_spaces"
DEFAULT_SPACE = SHIPPED_SPACES / "default.yaml"

Scalar = None | bool | int | float | str


# ---- the policy's knobs, derived from its pydantic schema ----------------------------------
@dataclass(frozen=True)
class _Knob:
    adapter: TypeAdapter
    integer: bool  # an int field: a float distribution would produce values it refuses


def _walk(model: type[BaseModel], prefix: str, knobs: dict[str, _Knob], free: list[str]) -> None:
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            _walk(ann, f"{prefix}{name}.", knobs, free)
        elif typing.get_origin(ann) is dict:
            free.append(f"{prefix}{name}.")  # free-form section such as model.*
        else:
            args = typing.get_args(ann) if isinstance(ann, types.UnionType) else (ann,)
            # Only the field's own type and bounds: cross-field rules depend on other knobs.
            adapter = TypeAdapter(
                typing.Annotated[(ann, *info.metadata)] if info.metadata else ann
            )
            knobs[f"{prefix}{name}"] = _Knob(adapter, int in args and float not in args)


@functools.cache
def _schema() -> tuple[dict[str, _Knob], tuple[str, ...]]:
    knobs: dict[str, _Knob] = {}
    free: list[str] = []
    _walk(Policy, "", knobs, free)
    return knobs, tuple(free)


def knob_names() -> list[str]:
    """Every dotted policy knob a search space may name (plus anything under model.)."""
    return list(_schema()[0])


def _key_problem(key: Any) -> str | None:
    knobs, free = _schema()
    if not isinstance(key, str):
        return f"key {key!r} must be a dotted string such as optimizer.lr"
    if key in knobs or any(key.startswith(p) and len(key) > len(p) for p in free):
        return None
    sections = {k.split(".")[0] for k in knobs if "." in k} | {p[:-1] for p in free}
    if key in sections:
        example = next(k for k in [*knobs, *(p + "name" for p in free)] if k.startswith(key + "."))
        return f"{key!r} is a section, not a knob; write its knobs as dotted keys (e.g. {example})"
    close = difflib.get_close_matches(key, list(knobs), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"valid knobs: {', '.join(knobs)}"
    return f"unknown knob {key!r}; {hint} (or model.<name> for a model hyperparameter)"


def _value_problem(key: str, value: Any) -> str | None:
    knob = _schema()[0].get(key)
    if knob is None:
        return None  # model.* values pass through to build_model(hp)
    try:
        knob.adapter.validate_python(_thaw(value))
    except ValidationError as exc:
        return f"value {_thaw(value)!r} is refused by the policy: {exc.errors()[0]['msg']}"
    return None


# ---- values: lists are stored as tuples (hashable), returned as lists (YAML/JSON friendly) --
def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        raise TypeError("a mapping")
    return value


def _thaw(value: Any) -> Any:
    return [_thaw(v) for v in value] if isinstance(value, tuple) else value


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps True apart from 1 (Python's == does not)."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        return (
            isinstance(a, tuple)
            and isinstance(b, tuple)
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _label(value: Any) -> Scalar:
    """Optuna's categorical choices must be None/bool/int/float/str: lists travel as JSON text."""
    return json.dumps(_thaw(value)) if isinstance(value, tuple) else value


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(_thaw(value))


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# ---- the validated spec ---------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched (or fixed) knob. A fixed value is stored as `choices == (value,)`."""

    key: str
    kind: Kind
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()
    step: float | int | None = None
    log: bool = False
    # key → values it may take; all must hold. Not hashed: dicts aren't, and keys identify params.
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict, hash=False)

    @property
    def value(self) -> Any:
        """The fixed value (kind 'fixed' only)."""
        assert self.kind == "fixed", self
        return self.choices[0]

    def active(self, sampled: Mapping[str, Any]) -> bool:
        return all(
            key in sampled and any(_same(sampled[key], v) for v in allowed)
            for key, allowed in self.when.items()
        )

    def can_take(self, value: Any) -> bool:
        if self.kind in ("choice", "fixed"):
            return any(_same(value, c) for c in self.choices)
        return _is_number(value) and self.low <= value <= self.high

    def sample(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            labels = [_label(c) for c in self.choices]
            picked = trial.suggest_categorical(self.key, labels)
            return next(
                c for c, lab in zip(self.choices, labels, strict=True) if _same(lab, picked)
            )
        if self.kind == "int":
            return int(
                trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
            )
        return float(
            trial.suggest_float(
                self.key, self.low, self.high, step=self.step, log=self.kind == "loguniform"
            )
        )

    def describe(self) -> str:
        if self.kind == "fixed":
            text = f"fixed {_show(self.value)}"
        elif self.kind == "choice":
            text = f"choice[{', '.join(_show(c) for c in self.choices)}]"
        else:
            text = f"{self.kind}[{self.low}, {self.high}]"
            text += " log" if self.log else ""
            text += f" step {self.step}" if self.step is not None else ""
        for key, allowed in self.when.items():
            text += f" if {key} in [{', '.join(_show(v) for v in allowed)}]"
        return text


@dataclass(frozen=True)
class SearchSpace:
    """An ordered tuple of Params; `suggest` is the define-by-run function Optuna samples."""

    params: tuple[Param, ...]
    source: str

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise SpaceError(
                f"Search space {path} does not exist.",
                fix="pass the path of a YAML search space, e.g. search_spaces/default.yaml.",
            )
        loader = yaml.SafeLoader(path.read_text())
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise SpaceError(
                f"Search space {path} is not valid YAML{where}: {problem}.",
                fix="fix the YAML syntax; a space is a mapping such as "
                "`optimizer.lr: {loguniform: [1.0e-4, 1.0e-2]}`.",
            ) from None
        finally:
            loader.dispose()
        lines: dict[str, int] = {}
        duplicates: list[str] = []
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                line = key_node.start_mark.line + 1
                if key_node.value in lines:
                    duplicates.append(
                        f"{key_node.value} (line {line}): defined twice (first at line "
                        f"{lines[key_node.value]}); YAML would silently keep only the last one"
                    )
                lines.setdefault(key_node.value, line)
        return cls._build(data, str(path), lines, duplicates)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> SearchSpace:
        return cls._build(data, source, {}, [])

    @classmethod
    def _build(
        cls, data: Any, source: str, lines: dict[str, int], problems: list[str]
    ) -> SearchSpace:
        header = f"Invalid search space {source}"
        if not isinstance(data, Mapping):
            got = "nothing (empty file)" if data is None else f"a {type(data).__name__}"
            raise SpaceError(f"{header}: it holds {got}, not a mapping of knobs.", fix=_FIX)
        if not data:
            collect([*problems, "it defines no keys"], SpaceError, header, _FIX)
        keys = [str(k) for k in data]
        parsed: dict[str, Param] = {}
        for key, raw in data.items():
            where = f"{key} (line {lines[key]})" if key in lines else str(key)
            found: list[str] = []
            param = _parse(key, raw, parsed, keys, found)
            problems += [f"{where}: {p}" for p in found]
            if param is not None and not found:
                parsed[key] = param
        collect(problems, SpaceError, header, _FIX)
        return cls(tuple(parsed.values()), source)

    # ---- use -----------------------------------------------------------------------------------
    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """One configuration: flat dotted overrides of the active params, fixed ones included."""
        sampled: dict[str, Any] = {}
        for param in self.params:
            if param.active(sampled):
                sampled[param.key] = param.sample(trial)
        return {key: _thaw(value) for key, value in sampled.items()}

    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def fix(self, overrides: Mapping[str, Any]) -> SearchSpace:
        """This space with `overrides` fixed (e.g. --epochs). A fixed key keeps its `when`, so a
        conditional knob stays conditional; a key new to the space is appended, unconditional."""
        params = list(self.params)
        where = {p.key: i for i, p in enumerate(params)}
        problems: list[str] = []
        for key, value in overrides.items():
            try:
                frozen = _freeze(value)
            except TypeError:
                problems.append(f"{key}: a fixed value must be a scalar or a list, not {value!r}")
                continue
            problem = _key_problem(key) or _value_problem(key, frozen)
            if problem:
                problems.append(f"{key}: {problem}")
            elif key in where:
                old = params[where[key]]
                params[where[key]] = Param(key, "fixed", choices=(frozen,), when=old.when)
            else:
                params.append(Param(key, "fixed", choices=(frozen,)))
        collect(
            problems,
            SpaceError,
            f"Cannot fix values in search space {self.source}",
            "pass values the policy accepts for valid knobs.",
        )
        return SearchSpace(tuple(params), self.source)

    def trial_params(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """`overrides` as Optuna stores them (list choices as their JSON labels), for
        `study.enqueue_trial`; keys the space does not sample are left out."""
        sampled = {p.key: p for p in self.params if p.kind != "fixed"}
        return {
            key: _label(_freeze(value)) if sampled[key].kind == "choice" else value
            for key, value in overrides.items()
            if key in sampled
        }

    def distributions_summary(self) -> dict[str, str]:
        """key → short text such as 'loguniform[0.0001, 0.03]', for logging as MLflow params."""
        return {p.key: p.describe() for p in self.params}

    def check_samples(self, base: Policy | None = None, n: int = 200, seed: int = 0) -> None:
        """Draw `n` random samples and raise one SpaceError if any makes an invalid policy — the
        cross-knob rules (warm-up < epochs, nesterov needs momentum) that load cannot see alone."""
        base = base or Policy()
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line per check
        try:
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        finally:
            optuna.logging.set_verbosity(verbosity)
        failures: dict[str, dict[str, Any]] = {}
        for _ in range(n):
            sample = self.suggest(study.ask())
            try:
                base.with_overrides(sample, source=f"a sample of {self.source}")
            except PolicyError as exc:
                failures.setdefault(exc.message.split(": ", 1)[-1], sample)
        listed = [f"{msg} (e.g. {json.dumps(s)})" for msg, s in list(failures.items())[:3]]
        collect(
            listed,
            SpaceError,
            f"Search space {self.source} produces invalid policies",
            "add `when:` conditions so that knobs are only sampled where the policy accepts them, "
            "or narrow the ranges.",
        )


# ---- parsing one entry ----------------------------------------------------------------------
def _parse(
    key: Any, raw: Any, earlier: dict[str, Param], keys: list[str], problems: list[str]
) -> Param | None:
    key_problem = _key_problem(key)
    if key_problem:
        problems.append(key_problem)
    knob_ok = key_problem is None

    if not isinstance(raw, Mapping):
        raw = {"fixed": raw}
    kinds = [k for k in raw if k in _OPTIONS]
    if len(kinds) != 1:
        unknown = [k for k in raw if k not in _OPTIONS and k not in ("step", "log", "when")]
        if kinds:
            problems.append(f"several distributions {kinds}; give exactly one")
        else:
            names = list(_OPTIONS)
            close = difflib.get_close_matches(str(unknown[0]), names, n=1) if unknown else []
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"unknown distribution {', '.join(map(repr, unknown)) or '(none)'}; "
                f"expected one of {names}{hint}"
            )
        return None
    kind: Kind = kinds[0]
    allowed = (*_OPTIONS[kind], "when")
    for opt in raw:
        if opt != kind and opt not in allowed:
            close = difflib.get_close_matches(str(opt), list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            extra = "; Optuna cannot step a log-scaled float" if opt == "step" else ""
            extra = "; use loguniform for a log-scaled float" if opt == "log" else extra
            problems.append(
                f"option {opt!r} is not valid for {kind}{hint}; allowed: {list(allowed)}{extra}"
            )

    when = _parse_when(key, raw.get("when"), earlier, keys, problems)
    spec = raw[kind]
    if kind == "fixed":
        try:
            value = _freeze(spec)
        except TypeError:
            problems.append(f"a fixed value must be a scalar or a list, not {spec!r}")
            return None
        if knob_ok and (p := _value_problem(key, value)):
            problems.append(p)
        return Param(key, "fixed", choices=(value,), when=when)
    if kind == "choice":
        return _parse_choice(key, spec, when, knob_ok, problems)
    return _parse_range(key, kind, spec, raw, when, knob_ok, problems)


def _parse_choice(
    key: str, spec: Any, when: dict, knob_ok: bool, problems: list[str]
) -> Param | None:
    if not isinstance(spec, list) or not spec:
        problems.append(f"choice needs a non-empty list of values, but got {spec!r}")
        return None
    values: list[Any] = []
    for raw_value in spec:
        try:
            value = _freeze(raw_value)
        except TypeError:
            problems.append(
                f"choice value {raw_value!r} must be a scalar or a list, not a mapping"
            )
            continue
        # Optuna finds a choice with ==, so 1, 1.0 and true would collide like true listed twice.
        if clash := [_show(v) for v in values if _label(value) == _label(v)]:
            problems.append(
                f"choice value {_show(value)} is listed twice (equal to {clash[0]} for Optuna)"
            )
            continue
        if knob_ok and (p := _value_problem(key, value)):
            problems.append(f"choice {p}")
        values.append(value)
    return Param(key, "choice", choices=tuple(values), when=when)


def _parse_range(
    key: str, kind: Kind, spec: Any, raw: Mapping, when: dict, knob_ok: bool, problems: list[str]
) -> Param | None:
    n_before = len(problems)
    if not (isinstance(spec, list) and len(spec) == 2 and all(_is_number(b) for b in spec)):
        problems.append(f"{kind} needs [low, high] with two numbers, but got {spec!r}")
        return None
    low, high = spec
    log = raw.get("log", False)
    step = raw.get("step")
    if kind == "int" and not all(isinstance(b, int) for b in spec):
        problems.append(f"int bounds must be integers, but got {spec!r}; use uniform for floats")
    if low > high:
        problems.append(f"low {low} > high {high}; write [low, high]")
    if not isinstance(log, bool):
        problems.append(f"log must be true or false, but got {log!r}")
    if (log or kind == "loguniform") and low <= 0:
        problems.append(f"a log scale needs bounds > 0, but got [{low}, {high}]")
    if step is not None and "step" in _OPTIONS[kind]:
        if kind == "int" and not (
            isinstance(step, int) and not isinstance(step, bool) and step > 0
        ):
            problems.append(f"step must be a positive integer for int, but got {step!r}")
        elif not (_is_number(step) and step > 0):
            problems.append(f"step must be a positive number, but got {step!r}")
        elif log and step != 1:
            problems.append(f"Optuna cannot combine log: true with step={step}; drop one of them")
        elif low <= high and not math.isclose(
            (high - low) / step, round((high - low) / step), abs_tol=1e-9
        ):
            problems.append(
                f"high - low = {high - low:g} is not a multiple of step {step}; "
                f"Optuna would never reach high={high}"
            )
    if knob_ok:
        knob = _schema()[0].get(key)
        if knob is not None and knob.integer and kind != "int":
            problems.append(f"an integer knob; use int: [low, high] instead of {kind}")
        for bound in (low, high):
            if p := _value_problem(key, bound):
                problems.append(f"bound {p}")
    if len(problems) > n_before:
        return None
    return Param(
        key, kind, low=low, high=high, step=step, log=bool(log) and kind == "int", when=when
    )


def _parse_when(
    key: Any, raw: Any, earlier: dict[str, Param], keys: list[str], problems: list[str]
) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not raw:
        problems.append(f"when needs a mapping such as {{optimizer.name: [sgd]}}, but got {raw!r}")
        return {}
    position = keys.index(str(key)) if str(key) in keys else len(keys)
    when: dict[str, tuple[Any, ...]] = {}
    for ref, values in raw.items():
        ref_s = str(ref)
        if ref_s == str(key):
            problems.append("when refers to the entry itself")
            continue
        if ref_s not in keys[:position]:
            if ref_s in keys:
                problems.append(
                    f"when refers to {ref_s!r}, which is defined later in the file; "
                    f"move this entry below {ref_s!r}"
                )
            else:
                close = difflib.get_close_matches(ref_s, keys[:position], n=1)
                hint = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else f"defined so far: {keys[:position]}"
                )
                problems.append(f"when refers to unknown key {ref_s!r}; {hint}")
            continue
        # A list lists alternatives; to match a list value (betas), wrap it: [[0.9, 0.999]].
        try:
            allowed = (
                tuple(_freeze(v) for v in values)
                if isinstance(values, list)
                else (_freeze(values),)
            )
        except TypeError:
            problems.append(f"when {ref_s}: values must be scalars or lists, not {values!r}")
            continue
        if not allowed:
            problems.append(f"when {ref_s}: needs at least one value")
            continue
        target = earlier.get(ref_s)
        if target is not None:  # None: that entry has problems of its own, already reported
            for value in allowed:
                if not target.can_take(value):
                    problems.append(
                        f"when {ref_s}: {_show(value)} can never happen; "
                        f"{ref_s} is {target.describe()}"
                    )
        when[ref_s] = allowed
    return when


def find_default_space(model_file: str | Path, declared: str | None) -> Path:
    """The model's SEARCH_SPACE (relative to model.py) if it declares one, else the default."""
    if declared:
        path = (Path(model_file).parent / declared).resolve()
        if not path.is_file():
            raise SpaceError(
                f"{model_file} declares SEARCH_SPACE={declared!r}, but {path} does not exist.",
                fix="point SEARCH_SPACE at a YAML file, relative to model.py, or remove it to use "
                "the default space.",
            )
        return path
    if not DEFAULT_SPACE.is_file():
        raise SpaceError(
            f"The default search space {DEFAULT_SPACE} is missing from this installation.",
            fix="reinstall autotune, or pass --space with a YAML search space.",
        )
    return DEFAULT_SPACE
