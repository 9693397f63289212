"""Reading a study back (front, counts) and exporting one trial's policy with its provenance."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autotune.errors import PolicyError, StudyError
from autotune.results import Front, compute_front
from autotune.selection import Rule, is_metric, natural_directions, parse_rule, select
from autotune.study import Study, StudyConfig, TrialView, list_study_names, studies_home

_log = logging.getLogger(__name__)


@dataclass
class StudyState:
    """A study as it stands on disk: settings, every trial that ended, and its front."""

    study: Study
    config: StudyConfig
    views: list[TrialView]
    front: Front

    @property
    def counts(self) -> dict[str, int]:
        out = {"finished": 0, "stopped": 0, "failed": 0}
        for v in self.views:
            key = "failed" if v.status in ("failed", "diverged") else v.status
            out[key] = out.get(key, 0) + 1
        return out


@dataclass
class Export:
    """What `autotune export` wrote: the chosen trial, the rule, the file and its provenance."""

    state: StudyState
    rule: Rule
    trial: TrialView
    path: Path
    provenance: dict[str, Any] = field(default_factory=dict)


def open_study(name: str) -> Study:
    """The study called `name` in the home folder, or the study folder a path points at."""
    folder = Path(name).expanduser()
    if ("/" in name or "\\" in name) and (folder / "study.json").is_file():
        study = Study(folder.resolve().name, home=folder.resolve().parent)
    else:
        study = Study(name)
    if not study.exists:
        known = list_study_names(study.home)
        listed = ", ".join(known) if known else "none yet"
        raise StudyError(
            f"There is no study {name!r} in {study.home} (existing studies: {listed}).",
            fix="pass one of those names, set AUTOTUNE_HOME to the folder holding the study, "
                "or create it with `autotune search model.py --name NAME`.")
    return study


def load_state(study: Study) -> StudyState:
    config = study.load_config()
    if not (study.dir / "optuna.db").is_file():  # load_study would create an empty database
        views: list[TrialView] = []
    else:
        try:
            views = study.trial_views()
        except KeyError:  # optuna.db exists but the study in it was never created
            views = []
    return StudyState(study, config, views, compute_front(views, config.objective_list()))


def all_states(home: Path | None = None) -> list[StudyState | tuple[str, str]]:
    """Every study in the home folder; one that cannot be read becomes (name, why)."""
    out: list[StudyState | tuple[str, str]] = []
    for name in list_study_names(home or studies_home()):
        try:
            out.append(load_state(Study(name, home=home)))
        except Exception as exc:  # one broken study must not hide the others
            out.append((name, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
    return out


def choose(state: StudyState, rule_text: str) -> tuple[Rule, TrialView]:
    rule = parse_rule(rule_text)
    directions = natural_directions(state.front)
    if rule.kind == "best" and rule.metric not in directions:
        # Only now is the model file worth importing: its OBJECTIVE names the quality metric.
        quality = _model_objective(state.config.model_file)
        directions = natural_directions(state.front, quality)
    return rule, select(rule, state.front, directions)


def _model_objective(path: str) -> tuple[str, str] | None:
    try:
        from autotune.contract import load_model_file

        return tuple(load_model_file(path).objective)  # type: ignore[return-value]
    except Exception:  # a moved or broken model file only costs us the direction hint
        return None


def sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def find_run_id(tracking_uri: str, study: str, number: int) -> tuple[str | None, str | None]:
    """(MLflow run id of the trial's child run, None) or (None, why it could not be found)."""
    from autotune.tracking import EXPERIMENT_PREFIX, _bounded_http, _client, redact_uri

    shown = redact_uri(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):].split("?")[0])
        if not db.is_file():  # opening it would create an empty store
            return None, f"no MLflow store at {db} (the study ran with --no-tracking?)"
    try:
        with _bounded_http(5):
            client = _client(tracking_uri)
            exp = client.get_experiment_by_name(EXPERIMENT_PREFIX + study)
            if exp is None:
                return None, f"no experiment {EXPERIMENT_PREFIX + study!r} in {shown}"
            runs = client.search_runs(
                [exp.experiment_id], f"tags.`autotune.trial_number` = '{number}' and "
                "tags.`autotune.role` = 'trial'", max_results=1,
                order_by=["attributes.start_time ASC"])
    except Exception as exc:  # an unreachable store must not block an export
        from autotune.tracking import _redact_text

        why = _redact_text(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return None, f"MLflow store {shown} could not be read: {why[:300]}"
    if not runs:
        return None, (f"trial {number} has no run in {shown} yet (its record may still be "
                      "spooled; rerun the export after the study has synced)")
    return runs[0].info.run_id, None


def export_policy(study_name: str, rule_text: str, out: Path,
                  tracking_uri: str | None = None) -> Export:
    """Choose a trial with `rule_text` and write its policy and provenance to `out` (YAML)."""
    from autotune.policy import Policy
    from autotune.recording import package_versions
    from autotune.tracking import redact_uri, resolve_tracking_uri

    state = load_state(open_study(study_name))
    rule, trial = choose(state, rule_text)
    policy = Policy.from_flat(trial.policy,
                              source=f"study {state.study.name} trial {trial.number}")
    uri = resolve_tracking_uri(tracking_uri, state.study.home)
    run_id, note = find_run_id(uri, state.study.name, trial.number)
    model = Path(state.config.model_file)
    current = sha256_file(model)
    provenance: dict[str, Any] = {
        "study": state.study.name,
        "trial": trial.number,
        "rule": rule.text or str(rule),
        "baseline": trial.baseline,
        "mlflow_run_id": run_id,
        "tracking_uri": redact_uri(uri),
        "objectives": {o.metric: _plain(trial.metrics.get(o.metric))
                       for o in state.front.objectives},
        "metrics": {k: _plain(v) for k, v in sorted(trial.metrics.items()) if is_metric(k)},
        "model_file": str(model),
        # The hash the study's trials were trained with; train --policy compares against it.
        "model_sha256": state.config.model_sha256,
        "packages": package_versions(),
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if note:
        provenance["mlflow_note"] = note
    if current != state.config.model_sha256:
        provenance["model_note"] = (
            f"{model} has changed since the study ran (now sha256 {current})"
            if current else f"{model} is no longer readable")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"policy": policy.to_dict(), "provenance": provenance}
    out.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return Export(state, rule, trial, out, provenance)


def _plain(v: float | None) -> float | int | str | None:
    """YAML-friendly numbers: integral values as int (FLOPs, params), non-finite as text."""
    if v is None:
        return None
    if not math.isfinite(v):
        return str(v)
    return int(v) if float(v).is_integer() and abs(v) >= 1 else float(v)


def check_origin(policy_file: Path, model_path: Path, model_sha256: str,
                 force: bool) -> str | None:
    """Refuse a policy exported from another model file (unless `force`); returns a warning to
    print when forced, None when the policy carries no provenance or matches."""
    try:
        data = yaml.safe_load(Path(policy_file).read_text())
    except (OSError, yaml.YAMLError):
        return None  # load_policy reports unreadable files with its own message
    prov = data.get("provenance") if isinstance(data, dict) else None
    if not isinstance(prov, dict) or not prov.get("model_sha256"):
        return None
    want = str(prov["model_sha256"])
    if want == model_sha256:
        return None
    origin = prov.get("model_file", "another model file")
    msg = (f"Policy {policy_file} was exported from {origin} (sha256 {want[:12]}…), but "
           f"{model_path} has sha256 {model_sha256[:12]}…: its objectives were reached on a "
           "different model file.")
    if force:
        return msg + " Training it anyway (--force)."
    raise PolicyError(
        f"this policy was exported from {origin} (sha256 {want[:12]}…), not from {model_path} "
        f"(sha256 {model_sha256[:12]}…).",
        fix="train it with the model file it was exported from, or pass --force to train it "
            "anyway.")
