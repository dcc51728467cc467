import torch

from clipmorph.training import losses


def test_gram_normalised_by_chw():
    f = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # N=1, C=2, H=1, W=2
    expected = torch.tensor([[[1 + 4, 3 + 8], [3 + 8, 9 + 16]]]) / (2 * 1 * 2)
    assert torch.allclose(losses.gram(f), expected)


def test_content_loss_is_mse():
    a, b = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2) * 3
    assert losses.content_loss(a, b).item() == 9.0


def test_style_loss_sums_layers_and_broadcasts_style_over_batch():
    out = {"a": torch.ones(2, 2, 2), "b": torch.zeros(2, 3, 3)}
    style = {"a": torch.zeros(1, 2, 2), "b": torch.full((1, 3, 3), 2.0)}
    assert losses.style_loss(out, style).item() == 1.0 + 4.0


def test_tv_loss_hand_computed():
    img = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # vertical diffs: |2-0|, |4-1| -> mean 2.5; horizontal: |1-0|, |4-2| -> mean 1.5
    assert losses.tv_loss(img).item() == 4.0


def test_noise_is_clamped_and_respects_density():
    x = torch.full((1, 3, 64, 64), 0.98)
    noisy = losses.add_noise(x, amplitude=0.5, density=0.25)
    assert noisy.min() >= 0 and noisy.max() <= 1
    changed = (noisy != x).any(dim=1).float().mean().item()
    assert 0.15 < changed < 0.35
    assert torch.equal(losses.add_noise(x, 0.5, 0.0), x)


def test_temporal_loss_zero_for_a_network_that_ignores_noise():
    x = torch.rand(2, 3, 16, 16)

    def constant(inp):
        return torch.ones_like(inp) * 0.5

    assert losses.temporal_noise_loss(constant, x, constant(x), amplitude=0.2, density=1.0).item() == 0.0


def test_temporal_loss_positive_for_identity_network():
    x = torch.rand(2, 3, 16, 16)
    assert losses.temporal_noise_loss(lambda t: t, x, x, amplitude=0.2, density=1.0).item() > 1e-4


def test_structure_loss_ignores_palette_and_fine_texture_but_flags_a_blob():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 128, 128) * 0.2 + torch.linspace(0, 0.6, 128).view(1, 1, 1, 128)  # a gradient + noise
    repainted = x[:, [2, 0, 1]] * 0.6 + 0.2  # channels swapped, darker, lower contrast: same layout
    textured = repainted + 0.1 * torch.sign(torch.randn(1, 1, 128, 128))  # stroke-sized texture, finer than a cell
    blob = repainted.clone()
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    blob[..., ((yy - 40) ** 2 + (xx - 30) ** 2) < 20**2] = 0.05  # a dark droplet in the bright half's way
    assert losses.structure_loss(x, x) == 0.0
    assert losses.structure_loss(repainted, x) < 1e-3
    assert losses.structure_loss(textured, x) < 0.02
    assert losses.structure_loss(blob, x) > 10 * losses.structure_loss(textured, x)


def test_shifted_temporal_loss_passes_a_shift_equivariant_network_and_flags_a_lattice_texture():
    # A blur is shift-equivariant: moving the input moves the output, so the shifted copy agrees.
    # A texture fixed to an 8-pixel lattice (what a strided network can paint into flat areas) does
    # not move with the picture, and the still-picture loss cannot see that.
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    blur = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False)
    torch.nn.init.constant_(blur.weight, 1 / 27)
    lattice = torch.zeros(1, 1, 64, 64)
    lattice[..., ::8, :] = 0.5

    def hatched(t: torch.Tensor) -> torch.Tensor:
        return t * 0.5 + lattice[..., : t.shape[-2], : t.shape[-1]]

    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        assert losses.temporal_noise_loss(blur, x, blur(x), 0.0, 0.5, max_shift=8, margin=4, generator=g) < 1e-10
        assert losses.temporal_noise_loss(hatched, x, hatched(x), 0.0, 0.5, max_shift=0) == 0.0
        shifted = [
            losses.temporal_noise_loss(hatched, x, hatched(x), 0.0, 0.5, max_shift=8, margin=4, generator=g)
            for _ in range(4)
        ]
    # Any shift but a multiple of 8 rows moves the lines off the lattice; a pure column shift does not.
    assert max(shifted) > 0.01


def test_balanced_style_loss_is_the_squared_relative_distance_per_layer():
    # Two layers whose Gram magnitudes differ 100x: unbalanced, the big one dominates; balanced,
    # each counts its squared relative error ||G - T||^2 / ||T||^2, as the quality metric grades it.
    small, big = torch.full((1, 2, 2), 0.01), torch.full((1, 2, 2), 1.0)
    out = {"a": small * 1.5, "b": big * 1.1}
    target = {"a": small, "b": big}
    assert torch.isclose(losses.style_loss(out, target), torch.tensor(0.005**2 + 0.1**2))  # ~all "b"
    balanced = losses.style_loss(out, target, balanced=True)
    assert torch.isclose(balanced, torch.tensor(0.5**2 + 0.1**2))


def test_sliced_wasserstein_sees_the_spread_that_a_gram_misses():
    """Zero for the painting's own features in any order; a washed-out copy (every value pulled halfway to
    the mean) is far from it, although a Gram would need only a rescaling to come close."""
    torch.manual_seed(0)
    painting = torch.rand(3, 4096) ** 2  # a skewed, wide spread of colours
    projections = losses.random_projections(3, 8, torch.device("cpu"))
    shuffled = painting[:, torch.randperm(4096)].reshape(1, 3, 64, 64)
    assert losses.sliced_wasserstein(shuffled, painting, projections).item() < 1e-6
    mean = painting.mean(dim=1, keepdim=True)
    washed = (mean + 0.5 * (painting - mean))[:, torch.randperm(4096)].reshape(1, 3, 64, 64)
    far = losses.sliced_wasserstein(washed, painting, projections).item()
    assert far > 100 * losses.sliced_wasserstein(shuffled, painting, projections).item() and far > 1e-3
    # Fewer positions than the painting has (a smaller crop): compared at the same quantiles.
    half = painting[:, ::4].reshape(1, 3, 32, 32)
    assert losses.sliced_wasserstein(half, painting, projections).item() < 0.05 * far
    directions = losses.random_projections(64, 16, torch.device("cpu"))
    assert directions.shape == (64, 16) and torch.allclose(directions.norm(dim=0), torch.ones(16))
