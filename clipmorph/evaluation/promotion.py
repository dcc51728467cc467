"""Moving the `champion` alias: only past a quality gate, or forced with a recorded reason.

The gate compares a candidate version's evaluation metrics (clipmorph.evaluation.evaluate,
logged on the version's MLflow run) with the current champion's:
  * style_distance (how far from the painting) and content_distance (how far
    from the photo) may be worse by at most settings.gate_style_tolerance and
    settings.gate_content_tolerance (relative): a version that is steadier only
    because it paints less cannot win;
  * artefact_score must stay under quality.ARTEFACT_MAX_PERCENT (no blobs/halos);
  * warping_ratio may not be worse (beyond settings.gate_warping_tolerance),
  * frames/s may be lower by at most settings.gate_fps_tolerance (relative); the
    CUDA numbers are compared when both versions have them, else the CPU ones.
The first version of a model becomes champion once it has those metrics.
Rollback is promoting an earlier version, through the same gate.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from clipmorph.evaluation.metric_names import ARTEFACT, CONTENT, CPU_FPS, CUDA_FPS, STYLE, WARPING
from clipmorph.evaluation.quality import ARTEFACT_MAX_PERCENT
from clipmorph.registry import ModelNotFoundError, registered_name
from clipmorph.settings import get_settings

if TYPE_CHECKING:
    from clipmorph.training.train import TrainConfig, TrainResult, TrainStep

GATE_KEYS = (STYLE, CONTENT, ARTEFACT, WARPING, CPU_FPS)
TAG_PREFIX = "metric."


class PromotionError(ValueError):
    """The request itself is invalid (e.g. --force without a reason)."""


@dataclass(frozen=True)
class GateCheck:
    metric: str
    candidate: float
    champion: float
    limit: float  # the worst value the candidate may have
    higher_is_better: bool

    @property
    def passed(self) -> bool:
        return self.candidate >= self.limit if self.higher_is_better else self.candidate <= self.limit

    def describe(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        verdict = "ok" if self.passed else "FAIL"
        needs = f"needs {sign} {self.limit:.6g}, champion {self.champion:.6g}"
        return f"{self.metric}: {self.candidate:.6g} ({needs}) {verdict}"


@dataclass
class PromotionResult:
    name: str
    version: str
    promoted: bool  # the version is the champion after this call
    changed: bool  # the alias moved
    previous: str | None  # champion version before the call
    forced: bool
    message: str
    checks: list[GateCheck] = field(default_factory=list)
    candidate_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)


def version_metrics(client: MlflowClient, name: str, version: str) -> dict[str, float]:
    """Metrics logged on the version's run, completed by its `metric.<key>` tags."""
    mv = client.get_model_version(name, version)
    metrics: dict[str, float] = {}
    for key, value in mv.tags.items():
        if key.startswith(TAG_PREFIX):
            try:
                metrics[key.removeprefix(TAG_PREFIX)] = float(value)
            except ValueError:
                continue
    if mv.run_id:
        with contextlib.suppress(MlflowException):  # run deleted: the tags are all there is
            metrics |= client.get_run(mv.run_id).data.metrics
    return metrics


def current_champion(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, get_settings().champion_alias).version)
    except MlflowException:
        return None


def missing_metrics(metrics: dict[str, float]) -> list[str]:
    return [k for k in GATE_KEYS if k not in metrics]


def gate(candidate: dict[str, float], champion: dict[str, float]) -> list[GateCheck]:
    """The checks a candidate must pass against the champion (both must have GATE_KEYS)."""
    s = get_settings()
    fps = CUDA_FPS if CUDA_FPS in candidate and CUDA_FPS in champion else CPU_FPS
    # (metric, tolerance, higher is better): how far the candidate may fall behind the champion on each.
    rules = [
        (STYLE, s.gate_style_tolerance, False),
        (CONTENT, s.gate_content_tolerance, False),
        (WARPING, s.gate_warping_tolerance, False),
        (fps, s.gate_fps_tolerance, True),
    ]
    checks = [
        GateCheck(
            metric,
            candidate[metric],
            champion[metric],
            champion[metric] * (1 - tolerance if higher else 1 + tolerance),
            higher_is_better=higher,
        )
        for metric, tolerance, higher in rules
    ]
    # Artefacts are judged on an absolute scale: a champion with blobs is no licence for more of them.
    checks.append(GateCheck(ARTEFACT, candidate[ARTEFACT], champion[ARTEFACT], ARTEFACT_MAX_PERCENT, False))
    return checks


def _record(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def promote(
    client: MlflowClient,
    name: str,
    version: str | int,
    force: bool = False,
    reason: str | None = None,
    actor: str | None = None,
) -> PromotionResult:
    """Make `version` the champion if it passes the gate (or `force`, which needs a reason)."""
    name, version = registered_name(name), str(version)
    if force and not (reason and reason.strip()):
        raise PromotionError("--force needs a --reason saying why the gate is overridden")
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise ModelNotFoundError(f"{name} has no version {version}") from None

    previous = current_champion(client, name)
    candidate = version_metrics(client, name, version)
    champion = version_metrics(client, name, previous) if previous and previous != version else {}
    result = PromotionResult(name, version, False, False, previous, force, "", [], candidate, champion)
    if previous == version:
        result.promoted, result.message = True, f"{name} version {version} is already the champion"
        return result

    refusal = _refusal(result)
    if refusal and not force:
        result.message = refusal
        return result

    client.set_registered_model_alias(name, get_settings().champion_alias, version)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    who = actor or _current_user()
    tags = {"promotion.at": now, "promotion.by": who, "promotion.previous": previous or ""}
    if force:
        tags |= {"promotion.forced": "true", "promotion.reason": reason.strip(), "promotion.overridden": refusal or ""}
    _record(client, name, version, tags)
    result.promoted = result.changed = True
    how = "forced past the gate" if force and refusal else "passed the gate"
    result.message = f"{name} version {version} is now the champion ({how}; previous: {previous or 'none'})"
    return result


def _current_user() -> str:
    try:
        return getpass.getuser()  # $LOGNAME, $USER, ... then the password database
    except OSError:
        return "unknown"


def _refusal(result: PromotionResult) -> str | None:
    """Why the gate refuses (None when it passes); fills result.checks."""
    where = f"run `clipmorph evaluate {result.name}/{{v}}` to log them"
    missing = missing_metrics(result.candidate_metrics)
    if missing:
        return f"version {result.version} has no metrics {', '.join(missing)}; " + where.format(v=result.version)
    if result.previous is None:
        return None
    missing = missing_metrics(result.champion_metrics)
    if missing:
        return f"champion version {result.previous} has no metrics {', '.join(missing)}; " + where.format(
            v=result.previous
        )
    result.checks = gate(result.candidate_metrics, result.champion_metrics)
    failed = [c.describe() for c in result.checks if not c.passed]
    if failed:
        return f"version {result.version} does not beat champion version {result.previous}: " + "; ".join(failed)
    return None


def auto_promote_first(client: MlflowClient, name: str, version: str | int) -> bool:
    """After training: make `version` champion when the model has none yet and the metrics exist."""
    name = registered_name(name)
    if current_champion(client, name) is not None:
        return False
    return promote(client, name, version, actor="clipmorph-train").promoted


def evaluate_and_gate(name: str, version: str) -> tuple[dict[str, float], bool]:
    """Grade a freshly registered version (quick profile) and make it champion if it is the first."""
    from clipmorph import registry
    from clipmorph.evaluation.evaluate import evaluate_and_log  # torch, PyAV: only when grading

    client = registry.configure()
    metrics = evaluate_and_log(client, name, version, quick=True)
    return metrics, auto_promote_first(client, name, version)


def train_and_gate(cfg: TrainConfig, on_step: Callable[[TrainStep], None] | None = None) -> TrainResult:
    """Train, register, then (with cfg.evaluate) grade and gate: what `clipmorph train` and a training job
    (POST /v1/styles) both run. The result carries the metrics and whether the version became champion."""
    from clipmorph.training.train import train

    result = train(cfg, on_step)
    if result.version and cfg.evaluate:  # a separate step: training itself knows nothing of grading
        result.metrics, result.champion = evaluate_and_gate(result.registered_name, result.version)
    return result
