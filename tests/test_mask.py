"""The shipped inpainting mask: what it hides on the face template, and that the file is what the code draws."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from synclip.face.align import TEMPLATE
from synclip.face.mask import draw_mask, load_mask, mask_path


def test_the_shipped_file_is_the_drawn_mask():
    np.testing.assert_array_equal(cv2.imread(str(mask_path()), cv2.IMREAD_GRAYSCALE), draw_mask())


@pytest.mark.parametrize("size", [16, 128, 256])
def test_mask_hides_mouth_and_chin_and_keeps_eyes_nose_and_the_background_beside_the_jaw(size):
    mask = load_mask(size)[0]
    assert mask.shape == (size, size)
    assert set(mask.unique().tolist()) == {0.0, 1.0}

    def at(x, y):
        return mask[min(int(y * size), size - 1), min(int(x * size), size - 1)].item()

    for x, y in TEMPLATE:  # eyes, nose bridge, nose tip
        assert at(x, y) == 1.0
    for x, y in ((0.5, 0.65), (0.4, 0.65), (0.6, 0.65), (0.5, 0.86), (0.5, 0.99)):  # mouth, chin
        assert at(x, y) == 0.0
    for x, y in ((0.15, 0.9), (0.85, 0.9), (0.05, 0.6), (0.95, 0.6)):  # beside the jaw and the cheeks
        assert at(x, y) == 1.0


def test_an_unreadable_mask_file_is_named(tmp_path):
    bad = tmp_path / "mask.png"
    bad.write_text("not an image")
    with pytest.raises(FileNotFoundError, match=str(bad)):
        load_mask(64, bad)
