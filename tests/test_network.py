import pytest
import torch

from clipmorph.model.artifact import ModelInfo, load_model, save_model
from clipmorph.model.network import PRESETS, Stylizer, build, count_parameters, fold_batch_norm


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("shape", [(1, 3, 37, 53), (2, 3, 64, 64), (1, 3, 5, 9)])
def test_output_shape_equals_input_shape(preset, shape):
    torch.manual_seed(0)
    with torch.no_grad():
        y = build(preset).eval()(torch.rand(shape))
    assert y.shape == shape


def test_odd_frame_size_855x481():
    with torch.no_grad():
        y = build("fast").eval()(torch.rand(1, 3, 481, 855))
    assert y.shape == (1, 3, 481, 855)


def test_unet_has_skips_and_johnson_does_not():
    assert PRESETS["standard"].skips and PRESETS["fast"].skips
    assert not PRESETS["johnson"].skips
    johnson = build("johnson")
    # pytorch/examples TransformerNet: 9x9 outer convs, 32/64/128, 5 residual blocks, ~1.68 M parameters.
    assert johnson.down1[0][1].kernel_size == (9, 9) and johnson.up3[1].kernel_size == (9, 9)
    assert len(johnson.res) == 5
    assert 1.6e6 < count_parameters(johnson) < 1.7e6


def test_skip_connection_carries_encoder_features():
    """Zeroing the bottleneck still leaves an input-dependent output only when skips exist."""
    x1, x2 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    outs = {}
    for preset in ("fast", "johnson"):
        torch.manual_seed(0)
        m = build(preset).eval()
        m.res = torch.nn.Sequential()
        m.down3 = torch.nn.Sequential(m.down3, _Zero())
        with torch.no_grad():
            outs[preset] = (m(x1) - m(x2)).abs().max().item()
    assert outs["fast"] > 1e-4
    assert outs["johnson"] < 1e-6


class _Zero(torch.nn.Module):
    def forward(self, x):
        return x * 0


def test_norm_smoothing_steadies_a_static_region_while_the_rest_changes():
    """Per-frame statistics shift when part of the frame changes, repainting the static part too."""
    torch.manual_seed(0)
    m = build("fast").eval()
    # Wide frames: the measured left part lies beyond the receptive field of the changing right part.
    frames = torch.rand(1, 3, 32, 480).repeat(8, 1, 1, 1)
    frames[:, :, :, 400:] = torch.rand(8, 3, 32, 80)
    with torch.no_grad():
        plain = m(frames)
        m.set_norm_smoothing(0.9)
        smooth = m(frames)

    def static_flicker(out):
        return (out[1:, :, :, :64] - out[:-1, :, :, :64]).abs().mean()

    assert static_flicker(smooth) < 0.5 * static_flicker(plain)
    # The first frame has no history, so it is stylized exactly as without smoothing.
    assert torch.allclose(plain[0], smooth[0], atol=1e-5)


def test_smoothing_state_carries_across_batches():
    torch.manual_seed(0)
    m = build("fast").eval()
    frames = torch.rand(4, 3, 24, 24)
    with torch.no_grad():
        m.set_norm_smoothing(0.7)
        whole = m(frames)
        m.reset_temporal_state()
        split = torch.cat([m(frames[:2]), m(frames[2:])])
    assert torch.allclose(whole, split, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = build("fast").eval()
    save_model(m, ModelInfo(net=PRESETS["fast"], style={"name": "x"}), tmp_path / "m")
    loaded, info = load_model(tmp_path / "m")
    assert isinstance(loaded, Stylizer) and info.style["name"] == "x"
    x = torch.rand(1, 3, 30, 30)
    with torch.no_grad():
        assert torch.equal(m(x), loaded(x))


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        build("huge")


def _far_change_effect(preset: str) -> float:
    """How much the output in the left half moves when only the far right edge of the input changes."""
    torch.manual_seed(0)
    m = build(preset).eval()
    x = torch.rand(1, 3, 64, 512)
    y = x.clone()
    y[..., 480:] = 1.0  # a bright patch far outside the left half's receptive field
    with torch.no_grad():
        return (m(x)[..., :128] - m(y)[..., :128]).abs().max().item()


def test_pixel_and_batch_norm_are_local_at_inference_and_instance_norm_is_not():
    """Instance norm ties every pixel to whole-picture statistics (what lets droplets steer it); pixel norm and
    batch norm in eval mode (fixed running statistics) don't."""
    assert _far_change_effect("rt_ln") == 0.0
    assert _far_change_effect("rt_bn") == 0.0
    assert _far_change_effect("rt_in") > 1e-4


def test_folding_batch_norm_keeps_the_output_and_removes_every_norm():
    torch.manual_seed(0)
    m = build("rt_bn").train()
    for _ in range(3):  # non-trivial running statistics
        m(torch.rand(2, 3, 64, 96) * 0.5 + 0.2)
    m.eval()
    with torch.no_grad():
        for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
        x = torch.rand(1, 3, 72, 100)
        before = m(x)
        fold_batch_norm(m)
        after = m(x)
    assert not any(isinstance(b, torch.nn.BatchNorm2d) for b in m.modules())
    assert before.abs().mean() > 0.05
    assert torch.allclose(before, after, atol=1e-4)


def test_space_to_depth_output_has_no_checkerboard_at_init():
    """The guided full-resolution output starts smooth: no 2x2 pattern from the half-resolution body."""
    torch.manual_seed(0)
    m = build("rt_ln").eval()
    flat = torch.full((1, 3, 64, 64), 0.5)
    with torch.no_grad():
        y = m(flat)
    # Away from the borders a flat input gives a flat output.
    inner = y[..., 8:-8, 8:-8]
    assert (inner - inner.mean(dim=(-1, -2), keepdim=True)).abs().max().item() < 1e-4


def test_frame_side_survives_save_and_load(tmp_path):
    m = build("rt_ln")
    folder = save_model(m, ModelInfo(net=PRESETS["rt_ln"], recommended={"frame_side": 640}), tmp_path / "m")
    loaded, info = load_model(folder)
    assert loaded.frame_side == 640 and info.net == PRESETS["rt_ln"]
    # Older configs (no norm/shuffle keys) load with the old defaults.
    assert PRESETS["fast"].norm == "instance" and not PRESETS["fast"].shuffle
