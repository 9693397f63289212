"""Issue 8, GPU trials: fractional GPUs pack trials (`--gpus-per-trial 0.25` → four per GPU),
fp16 autocast + GradScaler and bf16 on CUDA, peak memory from torch.cuda, energy from NVML.

The first tests run everywhere (fakes stand in for Ray and NVML); the `gpu`-marked ones need a
CUDA device and skip cleanly without one. They have NOT been run yet: this project's machines had
no GPU when they were written (see docs/BENCHMARKS.md, section GPU).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from autotune.contract import load_model_file
from autotune.costs import EnergyMeter, _nvml_handle
from autotune.knobs import precision as prec
from autotune.runner import SearchOptions, _slots
from autotune.runs import default_policy
from autotune.trainer import train
from tests.conftest import STUDIES

CUDA = torch.cuda.is_available()
DIGITS = STUDIES / "digits" / "model.py"


# ---- everywhere ---------------------------------------------------------------------------------
class _FakeRay:
    def __init__(self, resources: dict[str, float]) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return dict(self.resources)


@pytest.mark.parametrize(("resources", "cpus", "gpus", "slots"), [
    ({"CPU": 16, "GPU": 1}, 1, 0.25, 4),     # four trials share the one GPU
    ({"CPU": 16, "GPU": 1}, 1, 1, 1),
    ({"CPU": 16, "GPU": 2}, 1, 0.25, 8),
    ({"CPU": 2, "GPU": 1}, 1, 0.25, 2),      # CPUs are the limit
    ({"CPU": 16, "GPU": 1}, 1, 0.1, 10),     # 1 // 0.1 is 9.0 in floats: not here
    ({"CPU": 1, "GPU": 0}, 0.1, 0, 10),
    ({"CPU": 2}, 1, 0, 2),
])
def test_slots_from_cluster_resources(resources: dict[str, float], cpus: float, gpus: float,
                                      slots: int) -> None:
    opts = SearchOptions(model_file=Path("m.py"), cpus_per_trial=cpus, gpus_per_trial=gpus)
    assert _slots(_FakeRay(resources), opts) == slots


class _FakeNvml:
    def nvmlDeviceGetHandleByIndex(self, i: int) -> Any:  # noqa: N802 - NVML's own names
        return ("index", i)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> Any:  # noqa: N802
        return ("uuid", uuid)


def test_nvml_handle_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray gives a trial GPU 3 as CUDA_VISIBLE_DEVICES=3: torch calls it cuda:0, NVML 3."""
    nvml = _FakeNvml()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert _nvml_handle(nvml, 0) == ("index", 3)
    assert _nvml_handle(nvml, 1) == ("index", 1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8c2f")
    assert _nvml_handle(nvml, 0) == ("uuid", "GPU-8c2f")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _nvml_handle(nvml, 2) == ("index", 2)


def test_fp16_is_refused_without_cuda() -> None:
    from autotune.errors import PolicyError

    with pytest.raises(PolicyError, match="needs a CUDA GPU"):
        prec.check_runnable("fp16", "cpu")


# ---- on a CUDA GPU ------------------------------------------------------------------------------
def _digits(**overrides: Any) -> tuple[Any, Any]:
    mf = load_model_file(DIGITS)
    return mf, default_policy(mf).with_overrides({"epochs": 2, **overrides}, source="test")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")
def test_fp16_trains_with_a_grad_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Any] = []
    real = prec.grad_scaler

    def spy(precision: str, device: Any) -> Any:
        scaler = real(precision, device)
        made.append(scaler)
        return scaler

    monkeypatch.setattr(prec, "grad_scaler", spy)
    mf, policy = _digits(precision="fp16")
    result = train(mf, policy, device="cuda")
    assert result.status == "finished", result.error
    assert made and isinstance(made[0], torch.amp.GradScaler) and made[0].is_enabled()
    assert made[0].get_scale() > 0  # it scaled real steps (a skipped-everything run would be inf)
    assert math.isfinite(result.metrics["accuracy"]) and result.metrics["accuracy"] > 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")
def test_bf16_trains_on_cuda() -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    mf, policy = _digits(precision="bf16")
    result = train(mf, policy, device="cuda")
    assert result.status == "finished", result.error
    assert result.metrics["accuracy"] > 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")
def test_peak_memory_comes_from_torch_cuda() -> None:
    mf, policy = _digits()
    result = train(mf, policy, device="cuda")
    assert result.metrics["peak_mem_mb"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")
def test_energy_from_nvml_where_it_works() -> None:
    pytest.importorskip("pynvml", reason="nvidia-ml-py is missing: pip install autotune[gpu]")
    if EnergyMeter(torch.device("cuda"))._read is None:
        pytest.skip("NVML has no energy counter for this GPU (needs Volta or newer)")
    mf, policy = _digits()
    result = train(mf, policy, device="cuda")
    assert result.metrics.get("energy_j", 0) > 0


@pytest.mark.gpu
@pytest.mark.integration
@pytest.mark.timeout(600)
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none on this machine)")
def test_four_quarter_gpu_trials_run_at_once(tmp_path: Path, home: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from autotune.runner import run_search
    from autotune.study import Study
    from tests.test_cluster import copy_model

    if (os.cpu_count() or 1) < 4:
        pytest.skip("needs 4 CPUs for four one-CPU trials")
    model = copy_model(tmp_path / "project")
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("AUTOTUNE_TEST_MARKS", str(marks))  # inherited by the local Ray's workers
    monkeypatch.setenv("AUTOTUNE_TEST_STEP_SLEEP", "0.3")  # each trial trains for a few seconds
    outcome = run_search(SearchOptions(model_file=model, name="quarter", trials=4,
                                       gpus_per_trial=0.25, cpus_per_trial=1, early_stop=False,
                                       tracking=False))
    assert outcome.complete
    views = Study("quarter", home).trial_views()
    assert [v.status for v in views] == ["finished"] * 4, [v.error for v in views]
    started = [int(p.name.rsplit("-", 1)[1]) / 1e9 for p in marks.iterdir()]
    assert len(started) == 4
    # All four had started before the first one ended: they shared the GPU at the same time.
    assert max(started) < min(v.ended for v in views if v.ended)
