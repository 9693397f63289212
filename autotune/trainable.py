"""The Ray Tune trainable: one trial inside a Ray worker, with its watchdog; failures become reported statuses."""

from __future__ import annotations

import functools
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from autotune.contract import ModelFile, load_model_file
from autotune.errors import AutotuneError, StudyError
from autotune.policy import Policy


@functools.lru_cache(maxsize=4)
def _model(path: str, sha: str) -> ModelFile:
    return load_model_file(path)


def _model_path(config: dict[str, Any]) -> str:
    """Where this worker finds model.py: in the folder Ray shipped (runtime_env working_dir, on a
    cluster), else at the driver's own path (a local Ray, or a shared mount)."""
    rel = config.get("model_relpath")
    if rel:
        # Tune moves a trial into its own folder; TUNE_ORIG_WORKING_DIR is the shipped folder.
        for base in (os.environ.get("TUNE_ORIG_WORKING_DIR"), os.getcwd()):
            if base and (Path(base) / rel).is_file():
                return str(Path(base) / rel)
    return config["model_file"]


def _node_id() -> str | None:
    try:
        import ray

        # get_runtime_context() outside Ray would start a local Ray instance: never for a label
        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - only a label for the record
        return None


def trainable(config: dict[str, Any]) -> None:
    """One trial: train the policy and report every epoch; failures become reported statuses."""
    from ray import tune

    epoch = 0
    node = _node_id()
    ended = threading.Event()  # set once the trial's final status is reported: nothing after it

    def report(row: dict[str, Any]) -> None:
        nonlocal epoch
        if ended.is_set():
            return
        epoch = int(row.get("epoch", epoch + 1))
        out = {k: v for k, v in row.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if row.get("diverged"):
            out["autotune_status"] = "diverged"
            out["autotune_error"] = str(row.get("error") or "non-finite loss")
        elif epoch >= config["epochs"]:
            out["autotune_status"] = "finished"
        else:
            out["autotune_status"] = "running"
        if node:
            out["autotune_node"] = node
        tune.report(out)

    def fail(reason: str) -> None:
        if not ended.is_set():
            ended.set()
            tune.report({"epoch": epoch + 1, "autotune_status": "failed",
                         "autotune_error": reason, **({"autotune_node": node} if node else {})})

    watchdog = None
    if config.get("trial_timeout_s"):
        watchdog = _Watchdog(float(config["trial_timeout_s"]), threading.current_thread(), fail)
        watchdog.start()
    try:
        mf = _model(_model_path(config), config["model_sha256"])
        if mf.sha256 != config["model_sha256"]:
            raise StudyError(
                f"The model file this worker loaded ({mf.path}) differs from the driver's "
                f"{config['model_file']} (sha256 {mf.sha256[:12]} vs {config['model_sha256'][:12]}).",
                fix="ship the model's folder with the study (autotune does with --address) or keep "
                "identical copies on every node.")
        policy = Policy.from_flat(config["policy"], source="trial config")
        if mf.custom_loop and "torch" not in sys.modules and config.get("device") != "cuda":
            from autotune.custom_loop import run_custom

            run_custom(mf, policy, report)  # a loop without torch: the worker never imports it
        else:
            from autotune.trainer import train

            train(mf, policy, report=report, threads=config["threads"],
                  epoch_costs=config["epoch_costs"], device=config.get("device"))
    except _TrialTimeout:
        return  # the watchdog has reported the failure
    except AutotuneError as exc:
        fail(_oom_prefix(exc) + exc.render())
    except Exception as exc:  # the study goes on; the reason is recorded with the trial
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        fail(f"{_oom_prefix(exc)}{type(exc).__name__}: {exc} (at {where})")
    finally:
        ended.set()
        if watchdog is not None:
            watchdog.cancel()


_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory",
             "failed to allocate", "std::bad_alloc")


def _oom_prefix(exc: BaseException) -> str:
    """'out of memory: ' when the exception (or what it wraps) is an allocation failure."""
    import torch

    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        oom_types = (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))
        if isinstance(seen, oom_types) or any(t in str(seen).lower() for t in _OOM_TEXT):
            return "out of memory: "
        seen = seen.__cause__ or seen.__context__
    return ""


class _TrialTimeout(BaseException):
    """Raised in a trial's thread by the watchdog; not an Exception: user code can't eat it."""


class _Watchdog(threading.Thread):
    """Enforces --trial-timeout even when a trial hangs without reporting.

    At the deadline it reports the trial failed ("timed out after Ns"; the driver then stops
    it), raises _TrialTimeout in the training thread (ends Python-level hangs) and, if that
    thread is still alive after a grace period (a hang inside C code), ends the worker
    process. Actors are not reused when a timeout is set, so no later trial inherits it.
    """

    def __init__(self, timeout_s: float, target: threading.Thread, fail: Any,
                 grace_s: float = 5.0) -> None:
        super().__init__(name="autotune-trial-watchdog", daemon=True)
        self.timeout_s, self.target, self.fail, self.grace_s = timeout_s, target, fail, grace_s
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def run(self) -> None:
        import ctypes

        if self._cancelled.wait(self.timeout_s):
            return
        try:
            self.fail(f"timed out after {self.timeout_s:g}s (--trial-timeout)")
        except BaseException:  # noqa: BLE001 - Ray ends a stopped reporter with SystemExit
            pass
        if self._cancelled.is_set() or not self.target.is_alive():
            return
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.target.ident),
                                                   ctypes.py_object(_TrialTimeout))
        self.target.join(self.grace_s)
        if self.target.is_alive() and not self._cancelled.is_set():
            os._exit(1)  # hung in C code: only ending the worker frees its resources


# ---- the driver ---------------------------------------------------------------------------------
