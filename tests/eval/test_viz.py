"""The overlay's token -> image-region mapping (model view and original picture) and its drawing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from feather.errors import InputError, OutputError
from feather.manifest import ImageSpec
from feather.overlay import (
    View,
    model_view,
    render_overlay,
    save_overlay,
    token_box,
    token_box_original,
    tokens_in_box,
)


def clip_spec(shortest=336, crop=(336, 336), center_crop=True) -> ImageSpec:
    """LLaVA-1.5's CLIP preprocessing: shortest edge 336, center crop 336 x 336."""
    return ImageSpec(size=list(crop), resize_shortest_edge=shortest, resample="bicubic", center_crop=center_crop,
                     rescale_factor=1 / 255, normalize=True, mean=[0.5] * 3, std=[0.5] * 3)


def test_landscape_image_is_resized_then_cropped_at_the_sides():
    # 400 x 300 -> 448 x 336 (x 1.12), crop 336 wide: 56 px cut from each side
    view = View.of(400, 300, clip_spec())
    assert (view.view_width, view.view_height) == (336, 336)
    assert view.scale_x == pytest.approx(1.12) and view.scale_y == pytest.approx(1.12)
    assert (view.offset_x, view.offset_y) == (-56.0, 0.0)


@pytest.mark.parametrize("index, view_box, original_box", [
    (0, (0, 0, 14, 14), (50, 0, 62.5, 12.5)),  # top-left token: original x starts at 56 / 1.12
    (23, (322, 0, 336, 14), (337.5, 0, 350, 12.5)),  # top-right
    (24 + 5, (70, 14, 84, 28), (112.5, 12.5, 125, 25)),  # row 1, column 5
    (575, (322, 322, 336, 336), (337.5, 287.5, 350, 300)),  # bottom-right
])
def test_token_boxes_on_a_non_square_image(index, view_box, original_box):
    view = View.of(400, 300, clip_spec())
    assert token_box(index, 24, view) == pytest.approx(view_box)
    assert token_box_original(index, 24, view) == pytest.approx(original_box)


def test_portrait_image_is_cropped_top_and_bottom():
    # 300 x 600 -> 336 x 672 (x 1.12), crop 336 high: 168 px cut above and below
    view = View.of(300, 600, clip_spec())
    assert (view.offset_x, view.offset_y) == (0.0, -168.0)
    assert token_box_original(0, 24, view) == pytest.approx((0, 150, 12.5, 162.5))
    assert token_box_original(24 * 23, 24, view) == pytest.approx((0, 437.5, 12.5, 450))


def test_resized_smaller_than_crop_is_padded_and_padding_maps_to_no_pixels():
    # 300 x 200 with shortest edge 224 -> 336 x 224, crop 336 x 336: 56 rows of padding above
    view = View.of(300, 200, clip_spec(shortest=224))
    assert (view.offset_x, view.offset_y) == (0.0, 56.0)
    assert token_box_original(0, 24, view)[3] == 0.0  # the top row of tokens is all padding
    assert token_box_original(24 * 4, 24, view) == pytest.approx((0, 0, 12.5, 0 + (70 - 56) / 1.12))


def test_no_crop_is_a_straight_resize():
    view = View.of(200, 100, clip_spec(shortest=None, crop=(336, 336), center_crop=False))
    assert (view.view_width, view.view_height, view.offset_x, view.offset_y) == (336, 336, 0.0, 0.0)
    assert token_box_original(24 + 1, 24, view) == pytest.approx((200 / 24, 100 / 24, 400 / 24, 200 / 24))


def test_tokens_in_box_counts_positive_overlap_only():
    view = View.of(336, 336, clip_spec())
    assert tokens_in_box((14, 14, 28, 28), 24, view).tolist() == [25]  # exactly one patch, edges excluded
    assert tokens_in_box((13, 0, 15, 1), 24, view).tolist() == [0, 1]
    assert len(tokens_in_box((-50, -50, 500, 500), 24, view)) == 576  # clipped to the view


def test_bad_token_index_is_an_input_error():
    with pytest.raises(InputError, match="token index 576"):
        token_box(576, 24, View.of(336, 336, clip_spec()))


def test_model_view_matches_the_crop():
    arr = np.zeros((300, 400, 3), np.uint8)
    arr[:, :56] = 255  # resized: x < 62.72; after the 56 px crop: view x < 6.72
    img = np.asarray(model_view(arr, clip_spec()))
    assert img.shape == (336, 336, 3)
    assert img[:, :5].min() == 255 and img[:, 9:].max() == 0


def test_overlay_dims_exactly_the_pruned_tokens():
    grey = np.full((336, 336, 3), 200, np.uint8)
    stages = [{"layer": 3, "kept": [0, 575]}]
    out = render_overlay(grey, stages, clip_spec(), 24, "original")
    assert out.size == (2 * 336, 2 * (336 + 30))
    px = np.asarray(out)
    top = 30  # title strip
    stage_col = 336
    assert px[top + 7, stage_col + 7].tolist() == [200] * 3  # token 0 kept: full brightness
    assert px[top + 329, stage_col + 329].tolist() == [200] * 3  # token 575 kept
    assert px[top + 7, stage_col + 21].tolist() == [56] * 3  # token 1 pruned: 200 * 0.28
    assert px[top + 7, 21].tolist() == [200] * 3  # the input panel dims nothing


def test_overlay_original_row_greys_out_what_the_crop_removed():
    white = np.full((300, 400, 3), 255, np.uint8)
    out = np.asarray(render_overlay(white, [], clip_spec(), 24, "feather"))
    row = 30 + 336 + 30 + 10  # bottom panel, 10 px down
    assert out[row, 5].tolist() == [70, 70, 70]  # left edge of the original: cropped away
    assert out[row, 168].tolist() == [255, 255, 255]  # centre: seen


def test_save_overlay_writes_png_and_reports_bad_paths(tmp_path):
    path = save_overlay(Image.new("RGB", (64, 48), (10, 20, 30)), [{"layer": 8, "kept": [1, 2]}], clip_spec(), 24,
                        "feather", tmp_path / "o.png")
    assert Image.open(path).size == (2 * 336, 2 * 366)
    with pytest.raises(OutputError, match="no-such-dir"):
        save_overlay(np.zeros((8, 8, 3), np.uint8), [], clip_spec(), 24, "x", tmp_path / "no-such-dir" / "o.png")
