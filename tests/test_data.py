"""The digits canvas and the loaders for the paper's data."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from captum_salve.data import CUE_VARIANTS, CanvasConfig, DigitsCanvas, cifar100, image_folder, load_rgb


@pytest.fixture(scope="module")
def train():
    return DigitsCanvas("train")


@pytest.fixture(scope="module")
def test():
    return DigitsCanvas("test")


def test_split_sizes_and_determinism(train, test):
    assert len(train) + len(test) == 1797
    again = DigitsCanvas("test")
    assert torch.equal(again.images, test.images) and torch.equal(again.boxes, test.boxes)
    moved = DigitsCanvas("test", seed=5)
    assert torch.equal(moved.labels, test.labels) and not torch.equal(moved.boxes, test.boxes)


def test_train_and_test_digits_are_disjoint(train, test):
    # the same strokes never appear in both splits: compare each digit cut out of its box
    def strokes(data):
        return {
            tuple((data.images[i, 0, top:bottom, left:right] > 0.5).flatten().tolist())
            for i, (top, left, bottom, right) in enumerate(data.boxes.tolist())
        }

    assert not strokes(train) & strokes(test)


def test_boxes_hold_the_digit_and_the_cue_stays_outside(test):
    size = test.config.digit_size
    masks = test.masks()
    assert (masks.sum(dim=(1, 2)) == size * size).all()
    bright = test.images.min(dim=1).values > 0.5  # white strokes; the red cue is not bright in all channels
    assert not (bright & ~masks).any()
    assert not (test.cue_masks() & masks).any()


def test_the_cue_marks_most_images_of_its_two_classes_only(train):
    cue_classes = torch.isin(train.labels, torch.tensor(train.config.cue_classes))
    assert not train.has_cue[~cue_classes].any()
    rate = train.has_cue[cue_classes].float().mean()
    assert 0.7 < rate < 0.9
    red = (train.images[:, 0] - train.images[:, 1]) > 0.5
    assert torch.equal(red.any(dim=2).any(dim=1), train.has_cue)
    assert not (red & ~train.cue_masks()).any()


def _digest(canvas: DigitsCanvas) -> str:
    digest = hashlib.sha256()
    for tensor in (canvas.images, canvas.boxes, canvas.has_cue, canvas.cue_boxes, canvas.labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def test_the_default_canvas_is_drawn_as_before_the_cue_became_configurable(train, test):
    # digests taken before the change: the demo's cached models and stored figures were made from these images
    assert _digest(train) == "4150c8e4603a9713"
    assert _digest(test) == "5ce2ffc2a67bc666"
    assert _digest(DigitsCanvas("test", seed=3, copies=2)) == "3c0967c7a554ca3f"
    resized = CanvasConfig(canvas_size=96, cue_classes=(1, 2), cue_rate=0.5, cue_size=9)
    assert _digest(DigitsCanvas("test", config=resized)) == "c334dbf2b5ff5597"


def test_a_config_keys_the_model_cache_as_before_while_its_new_settings_are_defaults():
    before = {
        "canvas_size": 64, "digit_size": 32, "cue_classes": (3, 8), "cue_rate": 0.8, "cue_size": 7,
        "noise": 0.04, "test_fraction": 0.25,
    }  # fmt: skip
    assert CanvasConfig().key() == before
    assert CanvasConfig(cue_kind="tint").key() == {**before, "cue_kind": "tint"}


@pytest.mark.parametrize("name", [name for group in CUE_VARIANTS.values() for name in group])
def test_paired_canvases_differ_exactly_on_the_cue_mask(name):
    config = {**CUE_VARIANTS["tuning"], **CUE_VARIANTS["held_out"]}[name]
    with_cue = DigitsCanvas("test", config=config, seed=2, cue="all")
    without = DigitsCanvas("test", config=config, seed=2, cue="none")
    assert with_cue.has_cue.all() and not without.has_cue.any()
    assert torch.equal(with_cue.boxes, without.boxes) and torch.equal(with_cue.labels, without.labels)
    changed = (with_cue.images != without.images).any(dim=1)
    assert torch.equal(changed, with_cue.cue_masks())
    assert not without.cue_masks().any()
    if config.cue_kind != "tint":
        assert not (with_cue.cue_masks() & with_cue.masks()).any()


def test_a_tint_moves_every_pixel_towards_the_cue_colour():
    config = CanvasConfig(cue_kind="tint", cue_color=(0.0, 1.0, 0.5))
    with_cue = DigitsCanvas("test", config=config, cue="all")
    without = DigitsCanvas("test", config=config, cue="none")
    color = torch.tensor(config.cue_color)[:, None, None]
    torch.testing.assert_close(with_cue.images, 0.7 * without.images + 0.3 * color)
    assert with_cue.cue_masks().all()


@pytest.mark.parametrize(
    ("kind", "position", "box"),
    [
        ("patch", "top_right", [0, 57, 7, 64]),
        ("texture", "bottom_left", [57, 0, 64, 7]),
        ("patch", "left", [28, 0, 35, 7]),
        ("bar", "bottom", [57, 0, 64, 64]),
        ("bar", "right", [0, 57, 64, 64]),
    ],
)
def test_a_fixed_cue_sits_in_one_place_and_every_digit_keeps_clear_of_it(kind, position, box):
    canvas = DigitsCanvas("train", config=CanvasConfig(cue_kind=kind, cue_position=position))
    assert (canvas.cue_boxes[canvas.has_cue] == torch.tensor(box)).all()
    top, left, bottom, right = box
    boxes = canvas.boxes  # cued or not: where a digit sits must not tell whether the image carries the cue
    clear = (boxes[:, 2] < top) | (boxes[:, 0] > bottom) | (boxes[:, 3] < left) | (boxes[:, 1] > right)
    assert clear.all()


def test_a_bar_at_a_random_place_runs_along_a_side_the_digit_leaves_free():
    canvas = DigitsCanvas("test", config=CanvasConfig(cue_kind="bar", cue_size=3), cue="all")
    spans = canvas.cue_boxes[:, 2:] - canvas.cue_boxes[:, :2]
    assert ((spans == torch.tensor([3, 64])) | (spans == torch.tensor([64, 3]))).all(dim=1).all()
    assert not (canvas.cue_masks() & canvas.masks()).any()
    sides = {tuple(b) for b in canvas.cue_boxes.tolist()}
    assert len(sides) == 4  # all four sides are used


def test_cue_conflicting_images_carry_the_cue_on_the_other_classes_only(test):
    conflicting = DigitsCanvas("test", cue="conflicting")
    cue_classes = torch.isin(conflicting.labels, torch.tensor(conflicting.config.cue_classes))
    assert torch.equal(conflicting.has_cue, ~cue_classes)
    clean = DigitsCanvas("test", cue="none")
    assert torch.equal(conflicting.images[cue_classes], clean.images[cue_classes])


def test_train_and_test_rates_are_separate():
    config = CanvasConfig(cue_rate=1.0, test_cue_rate=0.0)
    train, test = DigitsCanvas("train", config=config), DigitsCanvas("test", config=config)
    assert torch.equal(train.has_cue, torch.isin(train.labels, torch.tensor(config.cue_classes)))
    assert not test.has_cue.any()
    assert CanvasConfig(cue_rate=0.3).rate("test") == 0.3


def test_the_variants_span_every_kind_and_keep_held_out_apart():
    assert set(CUE_VARIANTS) == {"tuning", "held_out"}
    tuning, held_out = CUE_VARIANTS["tuning"], CUE_VARIANTS["held_out"]
    assert not set(tuning) & set(held_out)
    configs = [*tuning.values(), *held_out.values()]
    assert len(set(configs)) == len(configs) and CanvasConfig() not in configs
    for group in (tuning, held_out):
        assert {config.cue_kind for config in group.values()} == {"patch", "bar", "tint", "texture"}
    assert len({config.cue_classes for config in configs}) == len(configs)
    assert any(config.test_cue_rate is not None for config in held_out.values())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"canvas_size": 10}, "canvas_size must be an integer >= 16"),
        ({"digit_size": 60}, "digit_size must be in"),
        ({"digit_size": 20.5}, "digit_size must be an integer"),
        ({"cue_classes": (3, 12)}, "cue_classes must be digits 0-9"),
        ({"cue_classes": (3, 3)}, "cue_classes must be digits 0-9, each once"),
        ({"cue_rate": 1.5}, r"cue_rate must be in \[0, 1\]"),
        ({"test_cue_rate": -0.1}, "test_cue_rate must be a finite number >= 0"),
        ({"cue_size": 0}, "cue_size must be an integer >= 1"),
        ({"noise": float("nan")}, "noise must be a finite number"),
        ({"test_fraction": 1.0}, r"test_fraction must be in \(0, 1\)"),
        ({"cue_kind": "sticker"}, "cue_kind must be one of"),
        ({"cue_position": "middle"}, "cue_position must be one of"),
        ({"cue_kind": "bar", "cue_position": "top_left"}, "cue_position must be one of .* for cue_kind 'bar'"),
        ({"cue_kind": "tint", "cue_position": "top"}, r"cue_position must be one of \('random',\) for cue_kind 'tint'"),
        ({"cue_color": (1.0, 0.0)}, r"cue_color must be 3 numbers \(R, G, B\) in \[0, 1\]"),
        ({"cue_color": (1.0, 0.0, 2.0)}, "cue_color must be 3 numbers"),
        ({"cue_kind": "texture", "cue_size": 1}, "cue_size must be at least 2 for a texture"),
    ],
)
def test_every_canvas_setting_is_checked_by_name(settings, message):
    with pytest.raises(ValueError, match=f"CanvasConfig {message}"):
        CanvasConfig(**settings)


def test_bad_canvas_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        DigitsCanvas("validation")
    with pytest.raises(ValueError, match="cue must be one of"):
        DigitsCanvas("test", cue="some")
    with pytest.raises(TypeError, match="config must be a CanvasConfig"):
        DigitsCanvas("test", config={"canvas_size": 64})


def test_image_folder_tree_uses_the_models_transform(tmp_path):
    for name in ("church", "gas_pump"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (40, 30), (i * 100, 50, 50)).save(tmp_path / name / f"{i}.JPEG")
    model = timm.create_model("resnet18", num_classes=2)
    data = image_folder(tmp_path, model)
    image, label = data[3]
    assert data.classes == ["church", "gas_pump"] and label == 1
    assert image.shape == (3, 224, 224)


def test_image_folder_errors(tmp_path):
    model = timm.create_model("resnet18", num_classes=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "missing", model)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no images in class sub-folders"):
        image_folder(tmp_path, model)


def test_cifar100_is_never_downloaded(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-100 was not found under"):
        cifar100(tmp_path, timm.create_model("resnet18", num_classes=100))


def test_a_16_bit_grey_image_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    loaded = np.asarray(load_rgb(tmp_path / "ramp.png"))
    assert loaded.shape == (64, 64, 3) and loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded[..., 0], np.round(ramp / 65535 * 255).astype(np.uint8))
    folder = tmp_path / "tree" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(ramp).save(folder / "ramp.png")
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "plain.png")
    dataset = image_folder(tmp_path / "tree", timm.create_model("resnet18", num_classes=1))
    assert dataset.loader is load_rgb
    np.testing.assert_array_equal(np.asarray(load_rgb(folder / "plain.png")), 200)
