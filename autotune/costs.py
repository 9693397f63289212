"""The cost meters of DESIGN §4: time, FLOPs, latency, size, memory and energy, measured on every run."""

from __future__ import annotations

import glob
import io
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: a worker running a custom loop that never imports torch
# (scripts/bench_overhead.py's no-op model) measures time, memory and energy without it.

# Names of autotune's own metrics, kept in one place so user metrics can't shadow them.
COST_METRICS = (
    "train_time_s",
    "train_flops",
    "infer_latency_ms",
    "infer_latency_batch_ms",
    "params",
    "nonzero_params",
    "model_size_mb",
    "peak_mem_mb",
    "energy_j",
)
# Costs that grow with the number of epochs trained (scaled to the full budget for stopped trials).
GROWING_COSTS = ("train_time_s", "train_flops", "energy_j")


def _device_type(device: torch.device | str) -> str:
    return device if isinstance(device, str) else device.type


def synchronize(device: torch.device | str) -> None:
    if _device_type(device) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def train_step_flops(
    model: torch.nn.Module, loss_of: Callable[[Any, Any], torch.Tensor], xb: Any, yb: Any
) -> int:
    """FLOPs of one forward+backward pass over the batch (torch's own counter, exact for matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss = loss_of(model(xb), yb)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def forward_flops(model: torch.nn.Module, x: Any) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def latency_ms(
    model: torch.nn.Module,
    x: Any,
    device: torch.device,
    *,
    repeats: int = 30,
    warmup: int = 3,
    budget_s: float = 1.0,
) -> float:
    """Median wall time of one forward pass, device-synchronised, bounded by a time budget."""
    import torch

    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        synchronize(device)
        deadline = time.perf_counter() + budget_s
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            synchronize(device)
            times.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() > deadline and len(times) >= 5:
                break
    return statistics.median(times)


def param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters) of a float model."""
    import torch

    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p).item())
    return total, nonzero


def model_size_mb(model: torch.nn.Module) -> float:
    """Bytes of the serialised state dict at its deployed precision (int8 packs count as stored)."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes / 1e6


_PROC_STATUS = Path("/proc/self/status")
_PROC_CLEAR_REFS = Path("/proc/self/clear_refs")


def _kernel_peak_rss() -> int | None:
    """The kernel's own high-water mark of resident memory (Linux VmHWM), in bytes."""
    try:
        for line in _PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_kernel_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (`echo 5 > /proc/self/clear_refs`); False if unsupported."""
    try:
        _PROC_CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _kernel_peak_rss() is not None


class PeakMemory:
    """Peak accelerator memory, or on CPU the peak growth of resident memory.

    On Linux the kernel tracks the CPU peak (VmHWM, reset on entry), so nothing runs beside the
    training loop; elsewhere a thread samples RSS every `interval_s`. The sampler costs the loop
    a few per cent on a 2-core machine (it wakes 200×/s and takes the GIL), hence the kernel way.
    """

    def __init__(self, device: torch.device | str, interval_s: float = 0.005) -> None:
        self.device = device
        self._cuda = _device_type(device) == "cuda"
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kernel = False

    def __enter__(self) -> PeakMemory:
        if self._cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            proc = psutil.Process()
            self._base = proc.memory_info().rss
            self._peak = self._base
            self._kernel = _reset_kernel_peak_rss()
            if self._kernel:
                return self

            def sample() -> None:
                while not self._stop.wait(self.interval_s):
                    self._peak = max(self._peak, proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            import torch

            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._kernel:
            peak = max(_kernel_peak_rss() or 0, psutil.Process().memory_info().rss)
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            peak = max(self._peak, psutil.Process().memory_info().rss)
        self.peak_mb = max(0.0, (peak - self._base) / 2**20)


def _nvml_handle(pynvml: Any, index: int) -> Any:
    """NVML's handle of torch's CUDA device `index`. NVML numbers every GPU of the machine and
    ignores CUDA_VISIBLE_DEVICES, which Ray sets per trial (trial on GPU 3: torch sees cuda:0),
    so the visible list is mapped back: an index or a GPU UUID (MIG devices: left unsupported)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if index < len(visible):
        entry = visible[index]
        if entry.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
        if entry.startswith("GPU-"):
            return pynvml.nvmlDeviceGetHandleByUUID(entry)
        raise ValueError(f"CUDA_VISIBLE_DEVICES entry {entry!r} is not a GPU index or UUID")
    return pynvml.nvmlDeviceGetHandleByIndex(index)


class EnergyMeter:
    """Energy from NVML (GPU) or RAPL (CPU package) counters; `joules` is None where neither is readable."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = device
        self.joules: float | None = None
        kind = _device_type(device)
        self._read: Callable[[], float] | None = self._nvml_reader() if kind == "cuda" else None
        if self._read is None and kind == "cpu":
            self._read = self._rapl_reader()

    def _nvml_reader(self) -> Callable[[], float] | None:
        try:
            import pynvml
            import torch

            pynvml.nvmlInit()
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            handle = _nvml_handle(pynvml, index)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises where unsupported
        except Exception:
            return None
        return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3  # mJ → J

    @staticmethod
    def _rapl_reader() -> Callable[[], float] | None:
        zones = [Path(p) for p in glob.glob("/sys/class/powercap/intel-rapl:[0-9]")]
        readable = []
        for zone in zones:
            try:
                (zone / "energy_uj").read_text()
                readable.append(zone)
            except OSError:
                continue
        if not readable:
            return None
        ranges = {z: int((z / "max_energy_range_uj").read_text()) for z in readable}
        last = {z: int((z / "energy_uj").read_text()) for z in readable}
        total = {"uj": 0}

        def read() -> float:
            # RAPL counters wrap at max_energy_range_uj; accumulate deltas to survive one wrap.
            for z in readable:
                now = int((z / "energy_uj").read_text())
                total["uj"] += (now - last[z]) % ranges[z]
                last[z] = now
            return total["uj"] / 1e6

        return read

    def __enter__(self) -> EnergyMeter:
        self._start = self._read() if self._read else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        if self._read is not None:
            self.joules = self._read() - self._start
