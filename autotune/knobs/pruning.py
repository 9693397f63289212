"""Pruning: global magnitude (torch.nn.utils.prune) or structured channels (torch-pruning).

Either runs one-shot or gradually (a cubic schedule)."""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from autotune.errors import PolicyError

if TYPE_CHECKING:
    from autotune.policy import Policy

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.RNNBase, nn.Embedding)


def prune_plan(policy: Policy) -> dict[int, float]:
    """Epoch (0-based, applied before that epoch trains) → target sparsity/channel ratio.

    Gradual pruning follows Zhu & Gupta's cubic schedule: s_t = s·(1 − (1 − t)³), which prunes
    fast while the network has redundancy and slowly near the target.
    """
    p = policy.prune
    if p.method == "none":
        return {}
    if p.schedule == "oneshot":
        return {policy.prune_epoch(): p.ratio}
    start, end = policy.gradual_window()
    span = end - start
    return {
        start + i: round(p.ratio * (1 - (1 - (i + 1) / span) ** 3), 6) for i in range(span)
    }


def _forward_output(model: nn.Module, example_inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        out = model(example_inputs)
    return out[0] if isinstance(out, tuple | list) else out


def output_layers(model: nn.Module, example_inputs: Any) -> list[nn.Module]:
    """Layers whose output channels are the model's outputs: structured pruning keeps them."""
    leaves = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    if not leaves:
        return []
    out_dim = _forward_output(model, example_inputs).shape[-1]
    ignored = [leaves[-1]]
    ignored += [m for m in leaves if isinstance(m, nn.Linear) and m.out_features == out_dim]
    return list({id(m): m for m in ignored}.values())


class Pruner:
    """Applies the policy's pruning to one model; `prune_to(r)` is called at each planned epoch."""

    def __init__(self, policy: Policy, model: nn.Module, example_inputs: Any) -> None:
        self.policy = policy
        self.method = policy.prune.method
        self.model = model
        self.example_inputs = example_inputs
        self._tp_pruner: Any = None
        self._steps_done = 0
        self.plan = prune_plan(policy)
        if self.method == "magnitude":
            self.targets = [
                (m, name)
                for m in model.modules()
                if isinstance(m, _WEIGHTED)
                for name, _ in m.named_parameters(recurse=False)
                if name.startswith("weight")
            ]
            if not self.targets:
                raise PolicyError(
                    "prune.method='magnitude' found no Linear/Conv/RNN/Embedding weights "
                    "to prune.",
                    fix="use prune.method=none for this model.",
                )
        elif self.method == "structured":
            self._check_structured_removes_something()
            self._tp_pruner = self._make_tp_pruner(model)

    def _check_structured_removes_something(self) -> None:
        """Refuse structured pruning that would silently do nothing (DESIGN §3).

        torch-pruning only warns ("Unwrapped parameters") on layers it can't handle, such as
        RNNs, and then removes nothing; a probe on a copy, stepped to the final ratio, finds
        that out before training starts.
        """
        probe = copy.deepcopy(self.model)
        before = sum(p.numel() for p in probe.parameters())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pruner = self._make_tp_pruner(probe)
            try:
                for _ in range(len(self.plan)):
                    pruner.step()
            except Exception as exc:  # torch-pruning raises many types on unsupported graphs
                raise PolicyError(
                    f"prune.method='structured' failed on this model with torch-pruning "
                    f"({type(exc).__name__}: {exc}).",
                    fix="use prune.method=magnitude, or build the model from Conv/Linear layers.",
                ) from None
        after = sum(p.numel() for p in probe.parameters())
        if after < before:
            return
        unwrapped = [
            str(w.message).split("\n")[0].rstrip(". ")
            for w in caught
            if "nwrapped" in str(w.message)
        ]
        kinds = sorted({type(m).__name__ for m in self.model.modules()
                        if isinstance(m, _WEIGHTED)})
        why = unwrapped[0] if unwrapped else f"no prunable channel groups among {kinds}"
        raise PolicyError(
            f"prune.method='structured' removes nothing from this model (torch-pruning cannot "
            f"prune its layers: {why}; the parameter count stayed at {before:,}).",
            fix="use prune.method=magnitude for this model.",
        )

    def _make_tp_pruner(self, model: nn.Module) -> Any:
        import torch_pruning as tp

        ratios = sorted(self.plan.values())
        final = ratios[-1]

        def scheduler(_ratio: float, steps: int) -> list[float]:
            # torch-pruning calls this with (ratio, steps); index k: the ratio after step k.
            return [0.0, *ratios][: steps + 1]

        try:
            pruner = tp.pruner.BasePruner(
                model,
                self.example_inputs,
                importance=tp.importance.MagnitudeImportance(p=2),
                pruning_ratio=final,
                iterative_steps=len(ratios),
                iterative_pruning_ratio_scheduler=scheduler,
                ignored_layers=output_layers(model, self.example_inputs),
            )
        except Exception as exc:  # torch-pruning raises many types on unsupported graphs
            raise PolicyError(
                f"prune.method='structured' cannot trace this model with torch-pruning "
                f"({type(exc).__name__}: {exc}).",
                fix="use prune.method=magnitude, or build the model from Conv/Linear/LSTM layers.",
            ) from None
        return pruner

    def prune_to(self, ratio: float) -> nn.Module:
        """Prune to `ratio` of the original weights (magnitude) or channels (structured)."""
        if self.method == "magnitude":
            current = self.sparsity()
            if ratio > current:
                # global_unstructured's amount is a share of the still-unpruned weights.
                amount = (ratio - current) / (1 - current)
                torch_prune.global_unstructured(
                    self.targets, pruning_method=torch_prune.L1Unstructured, amount=amount
                )
        elif self.method == "structured":
            self._tp_pruner.step()
            self._steps_done += 1
        return self.model

    def sparsity(self) -> float:
        total = zeros = 0
        for module, name in self.targets:
            w = getattr(module, name)
            total += w.numel()
            zeros += int((w == 0).sum())
        return zeros / max(1, total)

    def make_permanent(self) -> nn.Module:
        """Fold masks into the weights so the model has plain parameters before it is measured."""
        if self.method == "magnitude":
            for module, name in self.targets:
                if torch_prune.is_pruned(module) and hasattr(module, f"{name}_orig"):
                    torch_prune.remove(module, name)
        return self.model

    @property
    def changes_shapes(self) -> bool:
        return self.method == "structured"
