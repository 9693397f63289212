"""Import the user's model.py, check it against the contract (DESIGN §2), and collect every violation."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from autotune.errors import AutotuneError, ContractError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

# torch is imported where a function needs it: a custom loop that never imports torch runs in a
# Ray worker without it (~1 s of CPU a worker: scripts/bench_overhead.py).

_FIX = "see the model.py contract in README.md (section 'Writing model.py')."
Directions = ("min", "max")


@dataclass
class ModelFile:
    """A loaded, statically checked model.py; `check()` also runs it once on a few samples."""

    path: Path
    module: ModuleType
    objective: tuple[str, str]
    custom_loop: bool
    search_space: Path | None
    default_policy: dict[str, Any] = field(default_factory=dict)
    serve_batch: int = 64

    # ---- the user's functions, wrapped so their failures name the file and function ------------
    def build_model(self, hp: dict[str, Any]) -> torch.nn.Module:
        import torch

        model = self._call("build_model", dict(hp))
        if not isinstance(model, torch.nn.Module):
            raise ContractError(
                f"{self.path}: build_model(hp) returned {type(model).__name__}, "
                "but it must return a torch.nn.Module.",
                fix="return the model instance from build_model.",
            )
        return model

    def datasets(self) -> tuple[Dataset, Dataset]:
        return _as_datasets(self.path, self._call("datasets"))

    def loss(self, outputs: Any, targets: Any, label_smoothing: float = 0.0) -> torch.Tensor:
        fn = getattr(self.module, "loss_fn", None)
        if fn is None:
            import torch

            return torch.nn.functional.cross_entropy(
                outputs, targets, label_smoothing=label_smoothing
            )
        if label_smoothing and _accepts(fn, "label_smoothing"):
            return fn(outputs, targets, label_smoothing=label_smoothing)
        return fn(outputs, targets)

    def metrics(self, outputs: Any, targets: Any) -> dict[str, float]:
        fn = getattr(self.module, "metrics", None)
        if fn is None:
            return {"accuracy": float((outputs.argmax(-1) == targets).float().mean())}
        result = self._call("metrics", outputs, targets)
        if not isinstance(result, dict) or not result:
            raise ContractError(
                f"{self.path}: metrics(outputs, targets) returned {type(result).__name__}, "
                "but it must return a non-empty dict of metric name to float.",
                fix="return e.g. {'accuracy': 0.97}.",
            )
        try:
            return {str(k): float(v) for k, v in result.items()}
        except (TypeError, ValueError):
            raise ContractError(
                f"{self.path}: metrics() returned non-numeric values {result!r}.",
                fix="return plain floats (use .item() on tensors).",
            ) from None

    def custom_train(self, policy: Any, report: Callable[..., None]) -> Any:
        return self._call("train", policy, report)

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.module, name)(*args)
        except AutotuneError:  # e.g. a PolicyError from policy.prune_now in a custom loop
            raise
        except Exception as exc:
            raise ContractError(
                f"{self.path}: {name}() raised {type(exc).__name__}: {exc} "
                f"(at {_user_frame(exc, self.path)}).",
                fix=f"fix {name}() in {self.path.name}; run it alone in Python to see the full traceback.",
            ) from None

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    @property
    def quality_metric(self) -> str:
        return self.objective[0]


def load_model_file(path: str | Path) -> ModelFile:
    """Import model.py by path and check its contract statically; every problem is listed at once."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ContractError(
            f"Model file {path} does not exist.",
            fix="pass the path of your model.py (e.g. studies/digits/model.py).",
        )
    module = _import(path)
    problems: list[str] = []
    custom = callable(getattr(module, "train", None))
    required = () if custom else ("build_model", "datasets")
    for name in required:
        obj = getattr(module, name, None)
        if obj is None:
            problems.append(f"it defines no `{name}` function")
        elif not callable(obj):
            problems.append(f"`{name}` is a {type(obj).__name__}, not a function")
    for name in ("loss_fn", "metrics", "build_model", "datasets"):
        obj = getattr(module, name, None)
        if obj is not None and not callable(obj):
            if name not in required:
                problems.append(f"`{name}` is a {type(obj).__name__}, not a function")
    if callable(getattr(module, "build_model", None)) and not _arity_ok(module.build_model, 1):
        problems.append("`build_model` must take one argument `hp` (a dict of model hyperparameters)")
    if callable(getattr(module, "datasets", None)) and not _arity_ok(module.datasets, 0):
        problems.append("`datasets` must take no arguments")
    objective = getattr(module, "OBJECTIVE", None)
    if objective is None:
        if hasattr(module, "metrics") or custom:
            problems.append(
                "it defines its own metrics (or train loop) but no OBJECTIVE = (metric, 'min'|'max')"
            )
        objective = ("accuracy", "max")
    elif not (
        isinstance(objective, tuple | list)
        and len(objective) == 2
        and isinstance(objective[0], str)
        and objective[1] in Directions
    ):
        problems.append(f"OBJECTIVE must be a (metric name, 'min' | 'max') pair, but is {objective!r}")
        objective = ("accuracy", "max")
    space = getattr(module, "SEARCH_SPACE", None)
    space_path = None
    if space is not None:
        if not isinstance(space, str | Path):
            problems.append(f"SEARCH_SPACE must be a path string, but is {type(space).__name__}")
        else:
            space_path = (path.parent / space).resolve()
            if not space_path.is_file():
                problems.append(f"SEARCH_SPACE points to {space_path}, which does not exist")
    default_policy = getattr(module, "DEFAULT_POLICY", {}) or {}
    if not isinstance(default_policy, dict):
        problems.append(f"DEFAULT_POLICY must be a dict, but is {type(default_policy).__name__}")
        default_policy = {}
    serve_batch = getattr(module, "SERVE_BATCH", 64)
    if not isinstance(serve_batch, int) or isinstance(serve_batch, bool) or serve_batch < 1:
        problems.append(f"SERVE_BATCH must be a positive int, but is {serve_batch!r}")
        serve_batch = 64
    if problems:
        listed = "; ".join(problems)
        raise ContractError(
            f"{path} does not meet the model.py contract: {listed}.",
            fix="define build_model(hp) -> torch.nn.Module and datasets() -> (train, validation), "
            "or train(policy, report) for your own loop; " + _FIX,
        )
    return ModelFile(
        path=path,
        module=module,
        objective=(str(objective[0]), str(objective[1])),
        custom_loop=custom,
        search_space=space_path,
        default_policy=dict(default_policy),
        serve_batch=serve_batch,
    )


def _import(path: Path) -> ModuleType:
    name = f"autotune_user_model_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ContractError(f"{path} cannot be imported as Python.", fix="pass a .py file.")
    module = importlib.util.module_from_spec(spec)
    # The model's folder goes on sys.path so model.py can import its sibling modules.
    sys.path.insert(0, str(path.parent))
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(name, None)
        raise ContractError(
            f"{path} has a syntax error at line {exc.lineno}: {exc.msg}.",
            fix=f"correct line {exc.lineno} of {path.name}.",
        ) from None
    except ImportError as exc:
        sys.modules.pop(name, None)
        raise ContractError(
            f"{path} failed to import a module: {exc} (at {_user_frame(exc, path)}).",
            fix="install the missing package into autotune's virtual environment "
            "(.venv/bin/pip install NAME) or fix the import.",
        ) from None
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ContractError(
            f"{path} raised {type(exc).__name__}: {exc} while being imported "
            f"(at {_user_frame(exc, path)}).",
            fix="keep module-level code of model.py free of errors; run `python model.py` to see why.",
        ) from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _as_datasets(path: Path, value: Any) -> tuple[Dataset, Dataset]:
    import torch
    from torch.utils.data import Dataset, TensorDataset

    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ContractError(
            f"{path}: datasets() returned {_describe(value)}, but it must return a pair "
            "(train, validation) of torch Datasets or (X, y) tensor tuples.",
            fix="end datasets() with `return train_set, val_set`.",
        )
    out = []
    for label, ds in zip(("train", "validation"), value, strict=True):
        if isinstance(ds, tuple | list) and len(ds) == 2 and all(torch.is_tensor(t) for t in ds):
            if len(ds[0]) != len(ds[1]):
                raise ContractError(
                    f"{path}: the {label} set's X and y have different lengths "
                    f"({len(ds[0])} and {len(ds[1])}).",
                    fix="give X and y one row per example.",
                )
            ds = TensorDataset(ds[0], ds[1])
        if not isinstance(ds, Dataset) or not hasattr(ds, "__len__"):
            raise ContractError(
                f"{path}: datasets() returned {_describe(ds)} as its {label} set, but each set "
                "must be a sized torch Dataset or an (X, y) pair of tensors.",
                fix="wrap arrays with torch.utils.data.TensorDataset(torch.as_tensor(X), torch.as_tensor(y)).",
            )
        if len(ds) == 0:
            raise ContractError(
                f"{path}: datasets() returned an empty {label} set.",
                fix=f"make the {label} split hold at least one example.",
            )
        out.append(ds)
    return out[0], out[1]


def _describe(value: Any) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _arity_ok(fn: Callable[..., Any], n: int) -> bool:
    try:
        sig = inspect.signature(fn)
        sig.bind(*([None] * n))
        return True
    except TypeError:
        return False
    except ValueError:
        return True


def _user_frame(exc: BaseException, path: Path) -> str:
    """The innermost line of the user's own file in a traceback: where to look first."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == path]
    if not frames:
        if isinstance(exc, SyntaxError) and exc.lineno:
            return f"{path.name}:{exc.lineno}"
        return path.name
    f = frames[-1]
    return f"{path.name}:{f.lineno} `{(f.line or '').strip()}`"
