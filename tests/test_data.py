"""The digits canvas and the loaders for the paper's data."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from captum_salve.data import CanvasConfig, DigitsCanvas, cifar100, image_folder, load_rgb


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


def test_bad_canvas_settings():
    with pytest.raises(ValueError, match="digit_size must be in"):
        CanvasConfig(digit_size=60)
    with pytest.raises(ValueError, match="cue_classes must be digits"):
        CanvasConfig(cue_classes=(3, 12))
    with pytest.raises(ValueError, match="split must be one of"):
        DigitsCanvas("validation")


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
