"""ONNX export and the onnxruntime path: same pictures as torch, at any size, stored in the registry."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import PIL.Image
import pytest
import torch
from typer.testing import CliRunner

from clipmorph import registry
from clipmorph.cli import app
from clipmorph.model import export
from clipmorph.model.artifact import ModelInfo, read_info, save_model
from clipmorph.model.network import PRESETS, build
from clipmorph.settings import get_settings
from clipmorph.video import inference
from clipmorph.video.inference import StylizeOptions, load_stylizer, stylize_array


def bn_model(folder: Path) -> Path:
    """An rt_bn model whose batch norms hold non-trivial running statistics, as a trained one does."""
    torch.manual_seed(0)
    model = build("rt_bn")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return save_model(model, ModelInfo(net=PRESETS["rt_bn"], recommended={"frame_side": 96}), folder)


def test_onnx_matches_torch_at_sizes_that_are_not_multiples_of_the_stride(tmp_path, one_torch_thread) -> None:
    folder = bn_model(tmp_path / "m")
    onnx_path = export.export_onnx(folder, tmp_path / "m.onnx")
    torch_model = load_stylizer(str(folder), "cpu", runtime="torch").model
    onnx_model = load_stylizer(str(folder), "cpu", runtime="onnx").model
    assert isinstance(onnx_model, export.OnnxStylizer) and not isinstance(torch_model, export.OnnxStylizer)
    runner = export.OnnxStylizer(onnx_path, load_stylizer(str(folder), "cpu").info, threads=1)
    for shape in [(1, 3, 37, 53), (2, 3, 64, 96), (1, 3, 8, 8)]:
        x = torch.rand(shape)
        with torch.no_grad():
            expected = torch_model(x)
        for got in (runner(x), onnx_model(x)):
            assert got.shape == x.shape
            assert (got - expected).abs().max().item() < export.TOLERANCE
    # Whole-picture path (scaling to the frame side, back, uint8): at most one grey level apart.
    rgb = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    a, b = (stylize_array(m, rgb, StylizeOptions()) for m in (torch_model, onnx_model))
    assert a.shape == rgb.shape and np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_instance_norm_models_are_refused_with_a_clear_message(tmp_path) -> None:
    folder = save_model(build("fast"), ModelInfo(net=PRESETS["fast"]), tmp_path / "m")
    with pytest.raises(ValueError, match="instance"):
        export.export_onnx(folder, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="--runtime torch"):
        load_stylizer(str(folder), "cpu", runtime="onnx")
    # auto picks torch for them
    assert not isinstance(load_stylizer(str(folder), "cpu", runtime="auto").model, export.OnnxStylizer)


def test_registering_stores_the_onnx_file_beside_the_weights(settings, tmp_path) -> None:
    folder = bn_model(tmp_path / "m")
    client = registry.configure(settings)
    with mlflow.start_run() as run:
        mv = registry.register_model_dir(client, folder, "onnxtest", run.info.run_id)
    assert not (folder / export.ONNX_FILE).exists()  # the source folder (maybe a shipped one) is left alone
    resolved = registry.resolve(f"onnxtest/{mv.version}", client)
    assert (resolved.path / export.ONNX_FILE).is_file()
    # The stored file is the one the onnx runtime uses: no second export into the cache.
    loaded = load_stylizer(f"onnxtest/{mv.version}", "cpu", runtime="onnx")
    assert isinstance(loaded.model, export.OnnxStylizer)
    assert not (settings.var_dir / "onnx").exists()


def test_export_command_writes_a_file_and_explains_bad_input(settings, tmp_path) -> None:
    folder = bn_model(tmp_path / "m")
    out = tmp_path / "out" / "m.onnx"
    result = CliRunner().invoke(app, ["export", str(folder), str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 100_000 and not out.with_name("m.onnx.partial").exists()
    fast = save_model(build("fast"), ModelInfo(net=PRESETS["fast"]), tmp_path / "fast")
    result = CliRunner().invoke(app, ["export", str(fast), str(tmp_path / "f.onnx")])
    assert result.exit_code == 1 and "torch runtime" in result.output


def test_int8_runtime_stays_close_to_the_float_graph(tmp_path, one_torch_thread) -> None:
    # A shipped model (trained weights: random ones don't quantise like real ones), calibrated on
    # two validation photos, compared on a third one it has not seen, at the frame size it runs at.
    shipped = Path(__file__).resolve().parents[1] / "models" / "kanagawa"
    photos = inference.calibration_pictures(get_settings(), count=3)
    small = [np.asarray(PIL.Image.fromarray(p).resize((640, 360))) for p in photos]
    info = read_info(shipped)
    int8_path = export.int8_for(shipped, tmp_path, small[:2])
    assert int8_path.parent == tmp_path and int8_path.name.endswith(".int8.onnx")
    fp32 = export.OnnxStylizer(export.onnx_for(shipped, tmp_path), info, threads=1)
    int8 = export.OnnxStylizer(int8_path, info, threads=1)
    x = torch.from_numpy(small[2]).permute(2, 0, 1)[None].float() / 255
    mse = float(((int8(x).clamp(0, 1) - fp32(x).clamp(0, 1)) ** 2).mean())
    assert 10 * np.log10(1 / mse) > export.INT8_MIN_PSNR
    # and the runtime switch loads it, refusing instance-norm models like "onnx" does
    assert isinstance(load_stylizer(str(shipped), "cpu", runtime="int8").model, export.OnnxStylizer)
    fast = save_model(build("fast"), ModelInfo(net=PRESETS["fast"]), tmp_path / "fast")
    with pytest.raises(ValueError, match="--runtime torch"):
        load_stylizer(str(fast), "cpu", runtime="int8")


def test_auto_runtime_and_cpu_precision_follow_the_cpus_bf16(tmp_path, monkeypatch) -> None:
    """auto: torch under bf16 autocast + channels_last where the CPU does bf16 natively, else onnxruntime;
    CLIPMORPH_CPU_BF16=false keeps torch in float32."""
    folder = bn_model(tmp_path / "m")
    rgb = np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    for native in (True, False):
        monkeypatch.setattr(inference, "_native_bf16", lambda native=native: native)
        loaded = load_stylizer(str(folder), "cpu", runtime="auto").model
        assert isinstance(loaded, export.OnnxStylizer) is (not native)
    monkeypatch.setattr(inference, "_native_bf16", lambda: True)
    torch_model = load_stylizer(str(folder), "cpu", runtime="torch").model
    conv = next(m for m in torch_model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    with inference._autocast(torch_model, torch.device("cpu")) as mode:
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16, mode
    bf16 = stylize_array(torch_model, rgb, StylizeOptions())
    monkeypatch.setenv("CLIPMORPH_CPU_BF16", "false")
    get_settings.cache_clear()
    try:
        assert not inference.cpu_bf16()
        with inference._autocast(torch_model, torch.device("cpu")):
            assert not torch.is_autocast_enabled("cpu")
        fp32 = stylize_array(torch_model, rgb, StylizeOptions())
    finally:
        get_settings.cache_clear()
    # bf16 is a rounding of the same picture: a few grey levels at most (53 dB PSNR on the shipped model).
    assert np.abs(bf16.astype(int) - fp32.astype(int)).mean() < 2.0


def test_torch_compile_is_opt_in_and_gives_the_eager_pictures(tmp_path, monkeypatch) -> None:
    """CLIPMORPH_TORCH_COMPILE=true compiles torch networks (not instance-norm ones, whose smoothing keeps
    Python state between frames); the compiled network paints what the eager one does."""
    folder = bn_model(tmp_path / "m")
    rgb = np.random.default_rng(2).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    compiled_type = torch._dynamo.eval_frame.OptimizedModule
    eager = load_stylizer(str(folder), "cpu", runtime="torch").model
    assert not isinstance(eager, compiled_type)
    monkeypatch.setenv("CLIPMORPH_TORCH_COMPILE", "true")
    get_settings.cache_clear()
    try:
        compiled = load_stylizer(str(folder), "cpu", runtime="torch").model
        instance = save_model(build("fast"), ModelInfo(net=PRESETS["fast"]), tmp_path / "fast")
        assert not isinstance(load_stylizer(str(instance), "cpu", runtime="torch").model, compiled_type)
        assert isinstance(compiled, compiled_type)
        options = StylizeOptions(contrast=0)
        a, b = stylize_array(eager, rgb, options), stylize_array(compiled, rgb, options)
    finally:
        get_settings.cache_clear()
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
