"""Precision modes: autocast contexts for training, GradScaler for fp16, and the deployed model's dtype."""

from __future__ import annotations

import contextlib
import copy
import warnings

import torch

from autotune.errors import PolicyError

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
_QUANTISABLE = (torch.nn.Linear, torch.nn.GRU, torch.nn.LSTM)


def device_type(device: str | torch.device) -> str:
    return torch.device(device).type


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """Autocast for bf16/fp16 training; fp32 and int8 (quantised only after training) train in fp32."""
    dtype = _AUTOCAST.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type(device), dtype=dtype)


def grad_scaler(precision: str, device: str | torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling against gradient underflow; bf16 has fp32's exponent range and doesn't."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device_type(device))


def check_runnable(precision: str, device: str | torch.device) -> None:
    """Refuse, before anything runs, a precision this device can't run."""
    kind = device_type(device)
    if precision == "fp16" and kind != "cuda":
        raise PolicyError(
            f"precision='fp16' needs a CUDA GPU (autocast + GradScaler), but this run is on {kind}.",
            fix="use precision=bf16 or fp32 on CPU, or run the trial on a GPU (--gpus-per-trial).",
        )
    if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise PolicyError(
            "precision='bf16' is not supported by this GPU.", fix="use precision=fp16 or fp32."
        )
    if precision == "int8" and "qnnpack" not in torch.backends.quantized.supported_engines and (
        "fbgemm" not in torch.backends.quantized.supported_engines
    ):
        raise PolicyError(
            "precision='int8' needs torch's quantised CPU kernels (fbgemm or qnnpack), absent here.",
            fix="use precision=fp32 or bf16.",
        )


def deploy(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The artefact that is served: int8 dynamic quantisation (CPU) or a half-precision copy.

    Quality, latency and size are all measured on this model, so the numbers describe what ships.
    """
    model = model.eval()
    if precision == "int8":
        if not any(isinstance(m, _QUANTISABLE) for m in model.modules()):
            raise PolicyError(
                "precision='int8' quantises Linear/GRU/LSTM layers dynamically, and this model has none.",
                fix="use precision=fp32 or bf16 for this model.",
            )
        with warnings.catch_warnings():
            # torch.ao's dynamic quantisation warns about its planned removal; torchao's successor ran
            # ~5.7x slower on this CPU (ECOSYSTEM_NOTES), so the measured faster path is kept.
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(model).cpu(),
                set(_QUANTISABLE),
                dtype=torch.qint8,
            )
    if precision in _AUTOCAST:
        return copy.deepcopy(model).to(_AUTOCAST[precision])
    return model


def input_dtype(precision: str) -> torch.dtype | None:
    """The dtype floating inputs must be cast to for the deployed model (None: leave as is)."""
    return _AUTOCAST.get(precision)
