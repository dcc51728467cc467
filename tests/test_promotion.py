"""The promotion gate, forced promotions, rollback and what `@champion` resolves to, on a real MLflow registry."""

from __future__ import annotations

import mlflow
import pytest
from typer.testing import CliRunner

from clipmorph import registry
from clipmorph.cli import app
from clipmorph.evaluation.promotion import (
    PromotionError,
    auto_promote_first,
    current_champion,
    promote,
    version_metrics,
)
from clipmorph.evaluation.quality import ARTEFACT_MAX_PERCENT
from clipmorph.model.artifact import ModelInfo, save_model
from clipmorph.model.network import PRESETS, build

STYLE = "gatetest"
NAME = registry.registered_name(STYLE)
GOOD = {
    "warping_ratio": 2.0,
    "style_distance": 1.0,
    "content_distance": 0.5,
    "artefact_score": 0.1,
    "style_loss": 1.0,
    "content_loss": 5.0,
    "fps_cpu_640x360": 30.0,
}


@pytest.fixture
def client(settings):
    return registry.configure(settings)


@pytest.fixture
def model_dir(tmp_path):
    return save_model(build("fast"), ModelInfo(net=PRESETS["fast"], style={"spec": "kandinsky"}), tmp_path / "tiny")


@pytest.fixture
def register(client, model_dir):
    """Register a new version of the tiny model whose run carries the given metrics; -> version string."""

    def _register(metrics: dict[str, float] | None) -> str:
        with mlflow.start_run() as run:
            if metrics:
                mlflow.log_metrics(metrics)
        return str(registry.register_model_dir(client, model_dir, STYLE, run.info.run_id).version)

    return _register


def test_first_version_with_metrics_becomes_champion(client, register):
    v1 = register(GOOD)
    assert auto_promote_first(client, STYLE, v1)
    assert current_champion(client, NAME) == v1
    tags = client.get_model_version(NAME, v1).tags
    assert tags["promotion.by"] == "clipmorph-train" and tags["promotion.previous"] == ""
    # Later versions are not auto-promoted: they go through `promote`.
    assert not auto_promote_first(client, STYLE, register(GOOD))
    assert current_champion(client, NAME) == v1


def test_first_version_without_metrics_is_refused(client, register):
    v1 = register(None)
    assert not auto_promote_first(client, STYLE, v1)
    result = promote(client, STYLE, v1)
    assert not result.promoted and "no metrics" in result.message and "clipmorph evaluate" in result.message
    assert current_champion(client, NAME) is None


@pytest.mark.parametrize(
    ("change", "passes"),
    [
        ({}, True),
        ({"warping_ratio": 1.5, "style_distance": 0.9, "fps_cpu_640x360": 40.0}, True),
        ({"warping_ratio": 2.2}, False),
        ({"style_distance": 1.04}, True),  # within the default 5 % tolerance
        ({"style_distance": 1.2}, False),
        ({"content_distance": 0.54}, True),  # within the default 10 % tolerance
        ({"content_distance": 0.6}, False),
        ({"artefact_score": ARTEFACT_MAX_PERCENT * 0.9}, True),  # under the absolute threshold
        ({"artefact_score": ARTEFACT_MAX_PERCENT * 3}, False),
        # Steadier only because it paints less: the style check refuses it.
        ({"warping_ratio": 1.0, "style_distance": 1.5}, False),
        ({"fps_cpu_640x360": 27.0}, True),  # within the default 15 % tolerance
        ({"fps_cpu_640x360": 20.0}, False),
        ({"style_loss": 5.0, "content_loss": 50.0}, True),  # training losses depend on the recipe: not gated
    ],
)
def test_gate_against_the_champion(client, register, change, passes):
    v1 = register(GOOD)
    assert auto_promote_first(client, STYLE, v1)
    v2 = register(GOOD | change)
    result = promote(client, STYLE, v2, actor="tester")
    assert result.promoted is passes
    assert current_champion(client, NAME) == (v2 if passes else v1)
    assert result.previous == v1 and result.candidate_metrics["warping_ratio"] == (GOOD | change)["warping_ratio"]
    failed = {c.metric for c in result.checks if not c.passed}
    gated = {"warping_ratio", "style_distance", "content_distance", "artefact_score", "fps_cpu_640x360"}
    worse = {k for k, v in change.items() if k in gated and (v < GOOD[k] if k.startswith("fps") else v > GOOD[k])}
    assert failed == (set() if passes else worse)
    if not passes:
        assert "does not beat" in result.message


def test_gate_tolerances_come_from_settings(client, register, settings, monkeypatch):
    from clipmorph.settings import get_settings

    assert auto_promote_first(client, STYLE, register(GOOD))
    v2 = register(GOOD | {"style_distance": 1.2})
    monkeypatch.setenv("CLIPMORPH_GATE_STYLE_TOLERANCE", "0.25")
    get_settings.cache_clear()
    assert promote(client, STYLE, v2).promoted


def test_cuda_fps_is_compared_when_both_have_it(client, register):
    assert auto_promote_first(client, STYLE, register(GOOD | {"fps_cuda_640x360": 300.0}))
    # Slower on CPU but the GPU number, which serving uses, is what counts.
    result = promote(client, STYLE, register(GOOD | {"fps_cpu_640x360": 10.0, "fps_cuda_640x360": 290.0}))
    assert result.promoted and "fps_cuda_640x360" in {c.metric for c in result.checks}


def test_missing_metrics_refuse_unless_forced(client, register):
    v1 = register(GOOD)
    assert auto_promote_first(client, STYLE, v1)
    v2 = register({"style_distance": 0.5})
    result = promote(client, STYLE, v2)
    assert not result.promoted and "warping_ratio" in result.message and "fps_cpu_640x360" in result.message
    assert promote(client, STYLE, v2, force=True, reason="metrics lost, checked by eye").promoted


def test_champion_without_metrics_refuses(client, register):
    v1 = register(None)
    client.set_registered_model_alias(NAME, "champion", v1)
    result = promote(client, STYLE, register(GOOD))
    assert not result.promoted and f"champion version {v1} has no metrics" in result.message


def test_force_needs_a_reason_and_records_it(client, register):
    assert auto_promote_first(client, STYLE, register(GOOD))
    worse = register(GOOD | {"warping_ratio": 9.0})
    with pytest.raises(PromotionError):
        promote(client, STYLE, worse, force=True)
    with pytest.raises(PromotionError):
        promote(client, STYLE, worse, force=True, reason="  ")
    result = promote(client, STYLE, worse, force=True, reason="client prefers the look", actor="alice")
    assert result.promoted and result.forced
    tags = client.get_model_version(NAME, worse).tags
    assert tags["promotion.forced"] == "true"
    assert tags["promotion.reason"] == "client prefers the look"
    assert tags["promotion.by"] == "alice"
    assert tags["promotion.at"].startswith("20")
    assert "warping_ratio" in tags["promotion.overridden"]


def test_promote_moves_what_champion_resolves_to_and_rollback_restores_it(client, register):
    v1 = register(GOOD)
    assert auto_promote_first(client, STYLE, v1)
    assert registry.resolve(f"{STYLE}@champion", client).version == v1
    assert registry.resolve(STYLE, client).version == v1  # a bare name means the champion

    v2 = register(GOOD | {"warping_ratio": 1.0})
    assert promote(client, STYLE, v2).promoted
    resolved = registry.resolve(f"{STYLE}@champion", client)
    assert resolved.version == v2 and (resolved.path / "model.safetensors").exists()

    # Rolling back to v1 goes through the gate: v1 is steadier-looking no more, so it needs --force.
    assert not promote(client, STYLE, v1).promoted
    assert registry.resolve(f"{STYLE}@champion", client).version == v2
    assert promote(client, STYLE, v1, force=True, reason="rollback: v2 has artefacts on faces").promoted
    assert registry.resolve(f"{STYLE}@champion", client).version == v1


def test_promoting_the_champion_again_changes_nothing(client, register):
    v1 = register(GOOD)
    assert auto_promote_first(client, STYLE, v1)
    result = promote(client, STYLE, v1)
    assert result.promoted and not result.changed and "already" in result.message


def test_unknown_version_is_a_clear_error(client, register):
    register(GOOD)
    with pytest.raises(registry.ModelNotFoundError, match="no version 7"):
        promote(client, STYLE, "7")


def test_metrics_fall_back_to_version_tags(client, register):
    v1 = register(None)
    for key, value in GOOD.items():
        client.set_model_version_tag(NAME, v1, f"metric.{key}", str(value))
    assert version_metrics(client, NAME, v1) == GOOD
    assert auto_promote_first(client, STYLE, v1)


def test_cli_promote_refuses_with_both_metric_sets_then_forces(client, register):
    runner = CliRunner()
    v1 = register(GOOD)
    assert auto_promote_first(client, STYLE, v1)
    v2 = register(GOOD | {"style_distance": 3.0})

    refused = runner.invoke(app, ["promote", STYLE, v2])
    assert refused.exit_code != 0
    assert (
        "refused" in refused.output and f"v{v2} (candidate)" in refused.output and f"v{v1} (champion)" in refused.output
    )

    no_reason = runner.invoke(app, ["promote", STYLE, v2, "--force"])
    assert no_reason.exit_code != 0 and "--reason" in no_reason.output

    forced = runner.invoke(app, ["promote", STYLE, v2, "--force", "--reason", "approved by design"])
    assert forced.exit_code == 0, forced.output
    assert current_champion(client, NAME) == v2

    listing = runner.invoke(app, ["models"])
    assert listing.exit_code == 0, listing.output
    assert NAME in listing.output and "champion" in listing.output and "style_distance" in listing.output
