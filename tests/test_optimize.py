import os

import pytest
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from clipmorph.cli import app
from clipmorph.training.optimize import OptimizeConfig, config_from_run, optimize, reference_style_loss, run_optimize

TINY = dict(size=48, iters=12, style_scales=(1.0, 0.5))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def photo(assets):
    return assets / "photos" / "pytorch_examples" / "amber.jpg"


@pytest.mark.parametrize(
    ("optimizer", "init", "levels"), [("lbfgs", "content", 1), ("adam", "noise", 1), ("lbfgs", "noise", 2)]
)
def test_optimisation_clearly_lowers_the_total_loss(settings, photo, optimizer, init, levels):
    cfg = OptimizeConfig(content=str(photo), style="kandinsky", optimizer=optimizer, init=init, levels=levels, **TINY)
    result = optimize(cfg)

    assert result.image.shape == (3, 48, 48)
    assert result.image.min() >= 0 and result.image.max() <= 1
    assert result.iterations == 12 * levels
    assert result.final["total"] < 0.5 * result.initial["total"]


@pytest.mark.parametrize("spec", ["kandinsky:1,scream:-1", "kandinsky:0,scream:0", "kandinsky:-1"])
def test_mixing_weights_that_are_not_positive_are_rejected(settings, photo, tmp_path, spec):
    with pytest.raises(ValueError, match="must be positive"):
        optimize(OptimizeConfig(content=str(photo), style=spec, **TINY))

    styles = [arg for part in spec.split(",") for arg in ("--style", part)]
    result = CliRunner().invoke(app, ["optimize", str(photo), str(tmp_path / "o.png"), *styles])
    assert result.exit_code != 0
    assert "must be positive" in result.output
    assert not (tmp_path / "o.png").exists()


def test_several_styles_mix_with_normalised_weights(settings, photo):
    cfg = OptimizeConfig(content=str(photo), style="kandinsky:3,scream:1", **TINY | {"iters": 2})
    assert optimize(cfg).final["style"] > 0


def test_from_run_repeats_the_recorded_parameters_exactly(settings, photo, tmp_path):
    out = tmp_path / "first.png"
    cli = CliRunner()
    first = cli.invoke(
        app,
        ["optimize", str(photo), str(out), "--style", "kandinsky:2", "--style", "scream:1", "--size", "40",
         "--iters", "4", "--init", "noise", "--seed", "7", "--save-every", "2", "--set", "style_scales=1,0.5"],
    )  # fmt: skip
    assert first.exit_code == 0, first.output
    first_id = first.output.split("--from-run ")[-1].split(")")[0]

    again = cli.invoke(app, ["optimize", "--from-run", first_id])
    assert again.exit_code == 0, again.output
    second_id = again.output.split("--from-run ")[-1].split(")")[0]
    assert second_id != first_id

    client = MlflowClient(settings.tracking_uri)
    a, b = client.get_run(first_id), client.get_run(second_id)
    assert a.data.params == b.data.params
    assert a.data.params["seed"] == "7" and a.data.params["init"] == "noise"
    assert a.data.params["style"].endswith("kandinsky.jpg:2," + str(settings.styles_dir / "scream.jpg") + ":1")
    assert b.data.tags["clipmorph.output"] == str(tmp_path / "first-rerun.png")
    # Same seed and parameters on the same machine: the same result.
    assert b.data.metrics["final_total"] == pytest.approx(a.data.metrics["final_total"], rel=1e-3)
    assert Image.open(tmp_path / "first-rerun.png").size == (40, 40)

    # The intermediate images became an animated GIF, logged beside the result.
    gif = Image.open(tmp_path / "first.gif")
    assert gif.n_frames == 2  # snapshots at steps 2 and 4 (the result)
    assert {f.path for f in client.list_artifacts(first_id)} == {"first.png", "first.gif"}

    third = cli.invoke(app, ["optimize", "--from-run", first_id, str(tmp_path / "third.png")])
    assert third.exit_code == 0, third.output
    assert Image.open(tmp_path / "third.png").size == (40, 40)

    changed, _ = config_from_run(first_id, {"iters": "9"})
    assert changed.iters == 9 and changed.seed == 7


def test_from_run_refuses_a_run_that_is_not_an_optimisation(settings):
    import mlflow

    from clipmorph import registry

    registry.configure()
    with mlflow.start_run() as other:
        pass
    result = CliRunner().invoke(app, ["optimize", "--from-run", other.info.run_id])
    assert result.exit_code != 0 and "not a `clipmorph optimize` run" in result.output


def test_run_record_holds_paths_hashes_losses_and_the_image(settings, photo, tmp_path):
    result = run_optimize(
        OptimizeConfig(content=str(photo), style="kandinsky", **TINY | {"iters": 2}), tmp_path / "r.png"
    )
    run = MlflowClient(settings.tracking_uri).get_run(result.run_id)
    assert run.data.params["content"] == os.path.abspath(photo)
    assert len(run.data.params["content_sha256"]) == 64
    assert {"final_total", "final_style", "final_content", "final_tv", "seconds"} <= set(run.data.metrics)


def test_reference_style_loss_is_below_the_photos_own(settings, photo):
    untouched = reference_style_loss(photo, "kandinsky", size=48, iters=1)
    optimised = reference_style_loss(photo, "kandinsky", size=48, iters=10)
    assert 0 < optimised < 0.5 * untouched
