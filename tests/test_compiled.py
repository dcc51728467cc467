"""The ahead-of-time compiled runtime (AOTInductor): built once by `clipmorph compile`, then chosen by `auto`,
painting what eager torch paints at any frame size and batch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export import bn_model
from typer.testing import CliRunner

from clipmorph.cli import app
from clipmorph.model import compiled
from clipmorph.model.artifact import ModelInfo, save_model
from clipmorph.model.network import PRESETS, build
from clipmorph.settings import get_settings
from clipmorph.video import inference
from clipmorph.video.inference import StylizeOptions, load_stylizer, stylize_array


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(model folder, var folder holding its builds: any size, and 96x64 frames), built once through the CLI
    (about a minute)."""
    root = tmp_path_factory.mktemp("compiled")
    folder = bn_model(root / "m")
    var = root / "var"
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["compile", str(folder), "--size", "96x64"], env={"CLIPMORPH_VAR_DIR": str(var)}
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "built in" in result.output
    assert "for any frame size: built in" in result.output and "for 96x64 frames: built in" in result.output
    assert len(list((var / "compiled").glob("*.pt2"))) == 2
    return folder, var


def use_build(built: tuple[Path, Path], var: Path) -> Path:
    """Put the module's build into this test's var folder; returns the model folder."""
    folder, built_var = built
    shutil.copytree(built_var / "compiled", var / "compiled")
    return folder


def test_compiled_model_paints_what_eager_torch_does_at_any_size_and_batch(built, settings) -> None:
    folder = use_build(built, settings.var_dir)
    fast = load_stylizer(str(folder), "cpu", runtime="compiled").model
    eager = load_stylizer(str(folder), "cpu", runtime="torch").model
    assert isinstance(fast, compiled.CompiledStylizer)
    # Sizes that are not multiples of the stride, the smallest frame, and batches other than the example's.
    for shape in [(1, 3, 37, 53), (3, 3, 64, 96), (1, 3, 8, 8), (5, 3, 72, 40)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        expected, got = inference.run_network(eager, x).float(), inference.run_network(fast, x)
        assert got.shape == x.shape
        # Both round to bf16 where this CPU has it, in a different order of operations: a bf16 step apart.
        assert (got - expected).abs().mean().item() < 2e-3
        assert (got - expected).abs().max().item() < 3e-2
    assert set(fast.sized) == {(96, 64)}
    rgb = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    a, b = (stylize_array(m, rgb, StylizeOptions()) for m in (eager, fast))
    assert a.shape == b.shape == rgb.shape
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 0.5


def test_frames_of_a_built_size_run_on_its_build_and_the_rest_on_the_any_size_build(built, settings) -> None:
    folder = use_build(built, settings.var_dir)
    fast = load_stylizer(str(folder), "cpu", runtime="compiled").model

    class Refuses:
        def run(self, inputs):
            raise AssertionError(f"the any-size build ran {tuple(inputs[0].shape)}")

    fast.runner = Refuses()
    for shape in [(1, 3, 64, 96), (4, 3, 61, 93)]:  # 93x61 pads to 96x64
        assert fast(torch.rand(shape)).shape == shape
    with pytest.raises(AssertionError, match="any-size build ran"):
        fast(torch.rand(1, 3, 64, 100))


def test_frame_sizes_to_build_are_checked(built, settings) -> None:
    assert compiled.parse_size("640x360") == (640, 360)
    assert compiled.padded((93, 61), 4) == (96, 64)
    for bad in ["640", "640x", "axb", f"{compiled.MAX_SIDE + 1}x8", "4x4"]:
        with pytest.raises(ValueError, match=r"WIDTHxHEIGHT|between"):
            compiled.parse_size(bad)
    result = CliRunner().invoke(app, ["compile", str(built[0]), "--size", "640by360"])
    assert result.exit_code != 0 and "WIDTHxHEIGHT" in result.output, result.output


def test_auto_runs_the_build_once_this_machine_has_it(built, settings) -> None:
    folder = built[0]
    assert not isinstance(load_stylizer(str(folder), "cpu", runtime="auto").model, compiled.CompiledStylizer)
    use_build(built, settings.var_dir)
    assert isinstance(load_stylizer(str(folder), "cpu", runtime="auto").model, compiled.CompiledStylizer)
    # A second `clipmorph compile` finds both builds and builds nothing (95x63 frames run padded to 96x64).
    result = CliRunner().invoke(app, ["compile", str(folder), "--size", "95x63"])
    assert result.exit_code == 0 and "already built" in result.output, result.output


def test_a_build_is_only_used_for_the_weights_torch_cpu_and_precision_it_was_made_for(built, tmp_path) -> None:
    folder = built[0]
    names = {compiled.package_prefix(folder, bf16) for bf16 in (True, False)}
    assert len(names) == 2
    for name in names:
        assert torch.__version__.replace("+", "_") in name
        assert torch.backends.cpu.get_cpu_capability().lower() in name
    torch.manual_seed(1)
    other = save_model(build("rt_bn"), ModelInfo(net=PRESETS["rt_bn"]), tmp_path / "other")
    assert compiled.package_prefix(other, True) not in names
    other_prefix = compiled.package_prefix(other, True)
    assert compiled.cached_package(built[1] / "compiled", other_prefix) is None
    assert compiled.sized_packages(built[1] / "compiled", other_prefix) == {}


def test_instance_norm_models_and_oversized_frames_are_refused_clearly(built, settings, tmp_path) -> None:
    fast_preset = save_model(build("fast"), ModelInfo(net=PRESETS["fast"]), tmp_path / "fast")
    with pytest.raises(ValueError, match="--runtime torch"):
        load_stylizer(str(fast_preset), "cpu", runtime="compiled")
    result = CliRunner().invoke(app, ["compile", str(fast_preset)])
    assert result.exit_code == 0 and "skipped" in result.output, result.output
    folder = use_build(built, settings.var_dir)
    runner = load_stylizer(str(folder), "cpu", runtime="compiled").model
    with pytest.raises(ValueError, match=f"{compiled.MAX_SIDE} px"):
        runner(torch.zeros(1, 3, 8, compiled.MAX_SIDE + 8))
