import pytest
from PIL import Image

from clipmorph.training.data import PhotoDataset, find_images, parse_style_spec, visual_genome_images


def _img(path, mode="RGB", size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128 if mode in ("L", "P") else (10, 200, 30) if mode == "RGB" else (1, 2, 3, 4)).save(path)
    return path


def test_visual_genome_layout(tmp_path):
    a = _img(tmp_path / "VG_100K" / "1.jpg")
    b = _img(tmp_path / "VG_100K_2" / "2.jpg")
    _img(tmp_path / "elsewhere" / "3.jpg")
    assert visual_genome_images(tmp_path) == [a, b]
    with pytest.raises(FileNotFoundError, match="VG_100K"):
        visual_genome_images(tmp_path / "elsewhere")


def test_any_folder_nested_all_formats_and_modes_become_rgb_crops(tmp_path):
    paths = [
        _img(tmp_path / "a.jpg"),
        _img(tmp_path / "deep" / "b.png", "L"),
        _img(tmp_path / "deep" / "c.bmp", "P"),
        _img(tmp_path / "deep" / "er" / "d.webp"),
        _img(tmp_path / "e.jpg", "CMYK"),
    ]
    (tmp_path / "notes.txt").write_text("not an image")
    val = _img(tmp_path / "val" / "v.jpg")
    found = find_images([tmp_path], exclude=[tmp_path / "val"])
    assert sorted(found) == sorted(paths) and val not in found
    ds = PhotoDataset(found, size=24)
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, 24, 24) and x.min() >= 0 and x.max() <= 1


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    good = _img(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    ds = PhotoDataset([bad, good], size=16)
    assert ds[0].shape == (3, 16, 16)
    assert ds.unreadable == {bad}


def test_style_blend_weights_are_normalised_and_validated(tmp_path):
    _img(tmp_path / "a.jpg")
    _img(tmp_path / "b.png")
    blend = parse_style_spec("a:3,b:1", [tmp_path])
    assert [(s.path.name, s.weight) for s in blend] == [("a.jpg", 0.75), ("b.png", 0.25)]
    with pytest.raises(ValueError, match="positive"):
        parse_style_spec("a:1,b:-1", [tmp_path])
    with pytest.raises(FileNotFoundError, match="known styles: a, b"):
        parse_style_spec("c", [tmp_path])


def test_style_names_are_looked_up_in_each_folder_in_order(tmp_path):
    data, uploaded = tmp_path / "data", tmp_path / "uploaded"
    data.mkdir(), uploaded.mkdir()
    _img(data / "a.jpg")
    _img(uploaded / "a.png")  # the data's painting of that name wins
    _img(uploaded / "c.png")
    found = parse_style_spec("a,c", [data, uploaded])
    assert [s.path for s in found] == [data / "a.jpg", uploaded / "c.png"]
    with pytest.raises(FileNotFoundError, match="known styles: a, c"):
        parse_style_spec("d", [data, uploaded])


def test_photos_are_cropped_at_frame_scale(tmp_path):
    from PIL import Image

    from clipmorph.training.data import PhotoDataset

    Image.new("RGB", (1000, 500), (10, 200, 30)).save(tmp_path / "wide.jpg")
    Image.new("RGB", (90, 60), (200, 10, 30)).save(tmp_path / "tiny.png")
    ds = PhotoDataset([tmp_path / "wide.jpg", tmp_path / "tiny.png"], size=64, frame_side=320)
    assert ds[0].shape == (3, 64, 64) and ds[1].shape == (3, 64, 64)  # a photo smaller than the crop is enlarged
    img = ds._at_frame_scale(Image.new("RGB", (1000, 500)))
    assert 0.8 * 320 - 1 <= max(img.size) <= 1.25 * 320 + 1


def test_painting_is_shown_at_the_frame_side(tmp_path):
    from PIL import Image

    from clipmorph.training.data import load_style_tensor

    Image.new("RGB", (400, 300)).save(tmp_path / "small.jpg")
    assert load_style_tensor(tmp_path / "small.jpg", 640).shape == (1, 3, 480, 640)  # enlarged
    assert load_style_tensor(tmp_path / "small.jpg", 200).shape == (1, 3, 150, 200)  # shrunk
