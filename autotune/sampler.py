"""Sampler names → Optuna multi-objective samplers, sized to the study's budget."""

from __future__ import annotations

import warnings

import optuna

from autotune.errors import StudyError

SAMPLERS = ("tpe", "nsga2", "nsga3", "random", "gp", "qmc")
DEFAULT_SAMPLER = "tpe"  # benchmarks (docs/BENCHMARKS.md): MO-TPE beats NSGA-II on small budgets


def make_sampler(name: str, *, n_trials: int, seed: int | None) -> optuna.samplers.BaseSampler:
    name = name.lower()
    # `group` and GPSampler are marked experimental; the warning would reach every user's terminal.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "tpe":
        # Multivariate TPE models knob interactions (pruning ratio × lr); a short random start-up
        # matters on the small budgets autotune is used with.
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, group=True, constant_liar=True,
            n_startup_trials=max(4, min(10, n_trials // 4)),
        )
    if name in ("nsga2", "nsga3"):
        # The default population of 50 makes NSGA random search on small budgets: size it.
        population = max(4, min(50, n_trials // 5))
        cls = optuna.samplers.NSGAIISampler if name == "nsga2" else optuna.samplers.NSGAIIISampler
        return cls(population_size=population, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=max(4, min(10, n_trials // 4)))
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    raise StudyError(f"--sampler {name!r} is unknown.", fix=f"use one of {list(SAMPLERS)}.")
