"""Precision: bf16 autocast really computes in bf16, fp16 needs CUDA, int8 shrinks what ships."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autotune import costs
from autotune.errors import PolicyError
from autotune.knobs import precision as prec
from autotune.policy import Policy


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def test_bf16_autocast_runs_matmuls_in_bf16() -> None:
    layer = nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with Policy(precision="bf16").autocast("cpu"):
        assert layer(x).dtype == torch.bfloat16
    assert layer(x).dtype == torch.float32


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_fp32_and_int8_train_in_fp32(precision: str) -> None:
    with Policy(precision=precision).autocast("cpu"):
        assert nn.Linear(8, 4)(torch.randn(2, 8)).dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(PolicyError, match="CUDA") as info:
        prec.check_runnable("fp16", "cpu")
    assert info.value.fix


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_cpu_precisions_are_runnable(precision: str) -> None:
    prec.check_runnable(precision, "cpu")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_grad_scaler_only_for_fp16(precision: str) -> None:
    assert prec.grad_scaler(precision, "cpu") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grad_scaler_for_fp16_on_cuda() -> None:
    assert isinstance(prec.grad_scaler("fp16", "cuda"), torch.amp.GradScaler)


def test_int8_deploy_shrinks_and_stays_close() -> None:
    model = _mlp().eval()
    x = torch.randn(32, 64)
    with torch.no_grad():
        ref = model(x)
    deployed = prec.deploy(model, "int8")
    assert costs.model_size_mb(deployed) < 0.4 * costs.model_size_mb(model)
    assert any("quantized" in type(m).__module__ for m in deployed.modules())
    with torch.no_grad():
        out = deployed(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=0.05, rtol=0.05)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    # the trained model itself is left untouched
    assert type(model[0]) is nn.Linear


def test_bf16_deploy_is_a_bf16_copy() -> None:
    model = _mlp()
    deployed = prec.deploy(model, "bf16")
    assert next(deployed.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32
    assert prec.input_dtype("bf16") == torch.bfloat16
    assert prec.input_dtype("int8") is None
    assert costs.model_size_mb(deployed) < 0.6 * costs.model_size_mb(model)


def test_fp32_deploy_is_the_model() -> None:
    model = _mlp()
    assert prec.deploy(model, "fp32") is model
