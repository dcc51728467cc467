import pytest
import torch
from torchvision.models import vgg19

from clipmorph.model.vgg import MissingLayerError, from_torchvision_state, load_vgg
from clipmorph.settings import get_settings

TAPS = ["relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1"]


@pytest.fixture(scope="module")
def normalised(assets):
    return load_vgg(assets / "weights" / "vgg19_normalised_to_relu3_1.pth")


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """A file in torchvision's format (random init: the real one cannot be downloaded here)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tv") / "vgg19-dcbb9e9d.pth"
    torch.save(vgg19().state_dict(), path)
    return path


def test_both_formats_give_the_same_named_taps(normalised, torchvision_file):
    tv = load_vgg(torchvision_file)
    x = torch.rand(1, 3, 40, 48)
    a, b = normalised(x, TAPS), tv(x, TAPS)
    assert list(a) == list(b) == TAPS
    for tap in TAPS:
        assert a[tap].shape == b[tap].shape
    assert "relu5_1" in tv.available and "relu4_1" not in normalised.available


def test_torchvision_taps_match_torchvision_features(torchvision_file):
    state = torch.load(torchvision_file, weights_only=True)
    net = vgg19()
    net.load_state_dict(state)
    ours = from_torchvision_state(state)
    x = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = net.features[:21]((x - mean) / std)  # up to relu4_1
        got = ours(x, ["relu4_1"])["relu4_1"]
    assert torch.allclose(ref, got, atol=1e-4)


def test_normalised_net_mean_activation_is_about_one(normalised, assets):
    from clipmorph.training.data import find_images, load_rgb, to_tensor

    photos = find_images([assets / "photos" / "coco128_val2017"])[:4]
    means = []
    with torch.no_grad():
        for p in photos:
            x = to_tensor(load_rgb(p)).unsqueeze(0)
            means.append(normalised(x, ["relu1_1"])["relu1_1"].mean().item())
    assert 0.7 < sum(means) / len(means) < 1.3


def test_missing_layer_is_a_clear_error(normalised):
    with pytest.raises(MissingLayerError, match=r"relu4_1.*available: relu1_1, relu1_2, relu2_1, relu2_2, relu3_1"):
        normalised(torch.rand(1, 3, 16, 16), ["relu2_2", "relu4_1"])


def test_settings_pick_the_offline_weights(settings):
    assert get_settings().vgg_weights_path.name == "vgg19_normalised_to_relu3_1.pth"
