import shutil

import pytest
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from clipmorph.cli import app
from clipmorph.training.contact_sheet import sheet_size, tile
from clipmorph.training.sweep import grid, mix_spec, mix_values, parse_param, point_overrides, run_sweep

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def children_of(client: MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'")


def test_a_2x2_optimize_sweep_makes_one_parent_four_children_and_a_labelled_sheet(settings, assets, tmp_path):
    photo = assets / "photos" / "pytorch_examples" / "amber.jpg"
    result = CliRunner().invoke(
        app,
        ["sweep", "optimize", "--content", str(photo), "--style", "kandinsky",
         "--param", "style_weight=1e4,1e6", "--param", "tv_weight=0,1e-2",
         "--set", "size=32", "--set", "iters=2", "--set", "style_scales=1",
         "--out", str(tmp_path / "sweep"), "--name", "grid", "--cell", "64"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    parent_id = result.output.split("parent MLflow run: ")[-1].strip()

    client = MlflowClient(settings.tracking_uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sweep.style_weight"] == "1e4;1e6"
    children = children_of(client, parent_id)
    assert len(children) == 4
    swept = {(c.data.params["style_weight"], c.data.params["tv_weight"]) for c in children}
    assert swept == {("10000.0", "0.0"), ("10000.0", "0.01"), ("1000000.0", "0.0"), ("1000000.0", "0.01")}

    sheet = Image.open(tmp_path / "sweep" / "contact_sheet.png")
    assert sheet.size == sheet_size(4, columns=2, cell=64, lines=2)
    assert [f.path for f in client.list_artifacts(parent_id)] == ["contact_sheet.png"]


def test_a_mix_sweep_turns_ratios_into_style_specs(settings, assets, tmp_path):
    photo = assets / "photos" / "pytorch_examples" / "amber.jpg"
    base = {"content": str(photo), "style": "kandinsky", "size": "24", "iters": "1", "style_scales": "1"}
    result = run_sweep("optimize", base, {"mix": mix_values(3)}, tmp_path, ("kandinsky", "scream"), cell=32)

    client = MlflowClient(settings.tracking_uri)
    styles = [client.get_run(p.run_id).data.params["style"] for p in result.points]
    assert [s.count(",") for s in styles] == [0, 1, 0]
    assert styles[0].endswith("kandinsky.jpg:1") and styles[2].endswith("scream.jpg:1")
    assert Image.open(result.sheet).size == sheet_size(3, columns=3, cell=32, lines=1)


def test_grid_and_parameter_parsing():
    assert parse_param("style_weight=1e4,1e5") == ("style_weight", ["1e4", "1e5"])
    assert parse_param("style=a:1,b:1;c") == ("style", ["a:1,b:1", "c"])
    with pytest.raises(ValueError, match="name=value1"):
        parse_param("style_weight")
    assert grid({"a": ["1", "2"], "b": ["x", "y"]}) == [
        {"a": "1", "b": "x"}, {"a": "1", "b": "y"}, {"a": "2", "b": "x"}, {"a": "2", "b": "y"},
    ]  # fmt: skip
    assert mix_values(5) == ["0", "0.25", "0.5", "0.75", "1"]
    assert mix_spec("a", "b", 0.25) == "a:0.75,b:0.25"
    assert point_overrides({"mix": "1", "iters": "3"}, ("a", "b")) == {"style": "b:1", "iters": "3"}
    with pytest.raises(ValueError, match="--mix A,B"):
        point_overrides({"mix": "0.5"}, None)


def test_a_sweep_with_a_typo_fails_before_any_run(settings, assets, tmp_path):
    base = {"content": str(assets / "photos" / "pytorch_examples" / "amber.jpg"), "style": "kandinsky"}
    with pytest.raises(ValueError, match="unknown option 'styel_weight'"):
        run_sweep("optimize", base, {"styel_weight": ["1"]}, tmp_path)
    assert not (tmp_path / "contact_sheet.png").exists()


def test_contact_sheet_fits_images_of_any_shape(tmp_path):
    images = [Image.new("RGB", (80, 20), "red"), Image.new("RGB", (10, 50), "blue"), Image.new("RGB", (5, 5))]
    sheet = tile(images, [["a=1"], ["a=2", "b=3"], []], columns=2, cell=40)
    assert sheet.size == sheet_size(3, columns=2, cell=40, lines=2)
    assert sheet.getpixel((20, 20)) == (255, 0, 0)


@pytest.mark.slow
def test_a_short_train_sweep_nests_its_training_runs(settings, assets, tmp_path):
    photos, val = tmp_path / "photos", tmp_path / "val"
    for folder, source in ((photos, "coco128_train2017"), (val, "coco128_val2017")):
        folder.mkdir()
        for p in sorted((assets / "photos" / source).glob("*.jpg"))[:2]:
            shutil.copy(p, folder / p.name)
    base = {
        "style": "kandinsky", "iters": "2", "batch_size": "1", "size": "32", "style_size": "64", "workers": "0",
        "val_images": "1", "val_every": "2", "train_dirs": str(photos), "val_dir": str(val), "temporal_weight": "0",
    }  # fmt: skip
    photo = assets / "photos" / "pytorch_examples" / "amber.jpg"
    result = run_sweep("train", base, {"lr": ["1e-3", "1e-2"]}, tmp_path / "sweep", preview=photo, cell=48)

    client = MlflowClient(settings.tracking_uri)
    children = children_of(client, result.parent_run_id)
    assert {c.data.params["lr"] for c in children} == {"0.001", "0.01"}
    assert all(c.data.params["register"] == "False" for c in children)
    assert Image.open(result.sheet).size == sheet_size(2, columns=2, cell=48, lines=1)
    assert not client.search_registered_models()
