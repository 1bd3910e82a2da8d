"""The overlay's token -> image-region mapping (model view and original picture) and its drawing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from feather.errors import InputError, OutputError
from feather.manifest import ImageSpec
from feather.overlay import (
    LEGEND_H,
    LEGEND_ROW,
    OUTLINE,
    OUTSIDE,
    OUTSIDE_KEEP,
    PANEL,
    SWATCH,
    TITLE_H,
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


HEIGHT = 2 * (PANEL + TITLE_H) + LEGEND_H  # two rows of panels, then the legend band


def test_overlay_dims_exactly_the_pruned_tokens():
    grey = np.full((336, 336, 3), 200, np.uint8)
    stages = [{"layer": 3, "kept": [0, 575]}]
    out = render_overlay(grey, stages, clip_spec(), 24, "original")
    assert out.size == (2 * 336, 2 * (336 + 30) + LEGEND_H)
    px = np.asarray(out)
    top = 30  # title strip
    stage_col = 336
    assert px[top + 7, stage_col + 7].tolist() == [200] * 3  # token 0 kept: full brightness
    assert px[top + 329, stage_col + 329].tolist() == [200] * 3  # token 575 kept
    assert px[top + 7, stage_col + 21].tolist() == [56] * 3  # token 1 pruned: 200 * 0.28
    assert px[top + 7, 21].tolist() == [200] * 3  # the input panel dims nothing


@pytest.mark.parametrize("kept", [[0, 575], [25, 26, 300], list(range(0, 576, 27))])
def test_the_last_stage_tokens_are_outlined_in_both_rows(kept):
    """Each token the last stage keeps (21 of 576 at LLaVA-1.5's last FEATHER stage) gets an
    OUTLINE-coloured frame on its cell's edges, in the last column only, on the view and on
    the original; the cells of pruned tokens and earlier stages get none."""
    grey = np.full((336, 336, 3), 200, np.uint8)
    stages = [{"layer": 3, "kept": list(range(288))}, {"layer": 8, "kept": kept}]
    px = np.asarray(render_overlay(grey, stages, clip_spec(), 24, "feather"))
    outline = list(OUTLINE)
    for row_top in (TITLE_H, 2 * TITLE_H + PANEL):  # view row, original row (same 336 x 336 mapping)
        for col, left in ((2, 2 * PANEL), (1, PANEL)):
            frame = np.zeros((24, 24), bool)  # which cells have the outline colour on their left edge, mid-height
            for i in range(576):
                r, c = divmod(i, 24)
                frame[r, c] = px[row_top + r * 14 + 7, left + c * 14].tolist() == outline
            expected = np.zeros((24, 24), bool)
            if col == 2:
                expected.reshape(-1)[kept] = True
            assert np.array_equal(frame, expected), (row_top, col)
    r, c = divmod(kept[0], 24)
    assert px[TITLE_H + r * 14 + 7, 2 * PANEL + c * 14 + 7].tolist() == [200] * 3  # the cell's inside is untouched


def test_overlay_original_row_dims_what_the_crop_removed_without_hiding_it():
    """What the crop cuts (50 original px each side of a 400 x 300 picture) is blended towards
    grey, OUTSIDE_KEEP of the original kept: two colours there stay two colours."""
    arr = np.full((300, 400, 3), 255, np.uint8)
    arr[:150, :40] = (200, 10, 10)
    arr[150:, :40] = (10, 10, 200)
    out = np.asarray(render_overlay(arr, [], clip_spec(), 24, "feather"))
    bottom = 2 * TITLE_H + PANEL  # bottom panel; 400 x 300 is drawn 336 x 252

    def washed(c):
        return [int(np.floor(OUTSIDE_KEEP * v + (1 - OUTSIDE_KEEP) * g + 0.5)) for v, g in zip(c, OUTSIDE)]

    assert out[bottom + 20, 5].tolist() == washed((200, 10, 10))  # [157, 81, 81]
    assert out[bottom + 230, 5].tolist() == washed((10, 10, 200))
    assert out[bottom + 20, 168].tolist() == [255, 255, 255]  # centre: seen
    assert out[bottom + 20, 335 - 5].tolist() == washed((255, 255, 255))  # right edge: cut too


@pytest.mark.parametrize("stages, counts", [
    ([], "criterion feather; all 576 kept"),
    ([{"layer": 3, "kept": [1, 2, 3]}, {"layer": 8, "kept": [2]}], "criterion feather; layer 3: 3/576, layer 8: 1/576"),
])
def test_the_legend_band_explains_the_shades(stages, counts, monkeypatch):
    """Under the panels: a swatch per shade (kept, pruned, outlined, cropped) and the counts."""
    import feather.overlay as overlay

    texts = []
    real_text = overlay.ImageDraw.ImageDraw.text

    def text(self, xy, text, *args, **kwargs):
        texts.append((xy[1], text))
        return real_text(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(overlay.ImageDraw.ImageDraw, "text", text)
    out = render_overlay(np.full((336, 336, 3), 90, np.uint8), stages, clip_spec(), 24, "feather")
    assert out.size == (PANEL * (1 + len(stages)), HEIGHT)
    legend = [t for y, t in texts if y >= 2 * (PANEL + TITLE_H)]
    last = f"kept at the last stage (layer {stages[-1]['layer']}), outlined" if stages else "no pruning stage"
    assert legend == ["token kept", "token pruned (dimmed to 28%)", last, "cropped away before the model", counts]
    px = np.asarray(out)
    y0 = 2 * (PANEL + TITLE_H) + 6 + SWATCH // 2
    assert px[y0, 12].tolist() == [200] * 3 and px[y0 + LEGEND_ROW, 12].tolist() == [56] * 3
    assert px[y0 + 2 * LEGEND_ROW, 6].tolist() == list(OUTLINE)
    cropped = int(np.floor(OUTSIDE_KEEP * 200 + (1 - OUTSIDE_KEEP) * 128 + 0.5))
    assert px[y0 + 3 * LEGEND_ROW, 12].tolist() == [cropped] * 3


@pytest.mark.parametrize("width, height", [(5000, 1), (1, 3000), (900, 20)])
def test_overlay_of_extreme_strips_has_the_regular_size(width, height):
    arr = np.tile(np.arange(width, dtype=np.uint8)[None, :, None], (height, 1, 3))
    out = render_overlay(arr, [{"layer": 2, "kept": [0, 300]}], clip_spec(), 24, "feather")
    assert out.size == (2 * PANEL, HEIGHT)


def test_save_overlay_writes_png_and_reports_bad_paths(tmp_path):
    path = save_overlay(Image.new("RGB", (64, 48), (10, 20, 30)), [{"layer": 8, "kept": [1, 2]}], clip_spec(), 24,
                        "feather", tmp_path / "o.png")
    assert Image.open(path).size == (2 * 336, 2 * 366 + LEGEND_H)
    with pytest.raises(OutputError, match="no-such-dir"):
        save_overlay(np.zeros((8, 8, 3), np.uint8), [], clip_spec(), 24, "x", tmp_path / "no-such-dir" / "o.png")


def test_save_overlay_never_writes_over_its_input_or_leaves_a_partial_file(tmp_path):
    src = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (1, 2, 3)).save(src)
    before = src.read_bytes()
    with pytest.raises(OutputError, match=r"photo\.png: is the input image; write the overlay to another file$"):
        save_overlay(src, [], clip_spec(), 24, "x", tmp_path / "." / "photo.png")
    with pytest.raises(OutputError, match=r"o\.txt: unknown image suffix '\.txt'; expected e\.g\. \.png or \.jpg$"):
        save_overlay(src, [], clip_spec(), 24, "x", tmp_path / "o.txt")
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]
    jpg = save_overlay(str(src), [], clip_spec(), 24, "x", tmp_path / "o.jpg")
    assert Image.open(jpg).format == "JPEG" and sorted(p.name for p in tmp_path.iterdir()) == ["o.jpg", "photo.png"]


def test_feather_run_viz_prints_where_it_wrote_unless_quiet(export_feather, tmp_path, capsys):
    from feather.runtime.cli import main

    out = tmp_path / "kept.png"
    assert main([str(export_feather), "--max-new-tokens", "1", "--viz", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert f"overlay: {out}" in err and Image.open(out).size[1] == HEIGHT
    assert main([str(export_feather), "--max-new-tokens", "1", "--viz", str(tmp_path / "q.png"), "-q"]) == 0
    assert "overlay:" not in capsys.readouterr().err and (tmp_path / "q.png").is_file()
