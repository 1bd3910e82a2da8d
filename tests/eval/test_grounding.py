"""The shapes grounding task agrees with the harness: its answers parse to exactly the target's box."""

from __future__ import annotations

import pytest

from feather.eval import gt_in_view, iou, load_samples, parse_box
from feather.grounding import heldout, shapes
from feather.grounding.train import build_tokenizer
from feather.manifest import ImageSpec
from feather.overlay import View

SPEC = ImageSpec(size=[96, 96], resize_shortest_edge=96, resample="bicubic", center_crop=True,
                 rescale_factor=1 / 255, normalize=True, mean=[0.5] * 3, std=[0.5] * 3)


@pytest.mark.parametrize("cell", [0, 7, 35])
def test_answer_is_nine_known_tokens_and_parses_to_the_cell(cell):
    tok = build_tokenizer()
    enc = tok.encode(shapes.answer_text(cell), add_special_tokens=False)
    assert len(enc.ids) == 9 and tok.token_to_id("<unk>") not in enc.ids
    box = parse_box(tok.decode(enc.ids))
    x, y, w, h = shapes.bbox_pixels(cell)
    truth = gt_in_view((x, y, x + w, y + h), View.of(96, 96, SPEC))
    assert iou(box, truth) > 0.99  # coordinates are written to 3 decimals (0.167 for 1/6)


def test_heldout_is_harness_jsonl(tmp_path):
    samples = load_samples(heldout.write(tmp_path, n=5))
    assert len(samples) == 5 and all(s.split == "heldout" for s in samples)
    for s in samples:
        colour, shape = s.expression.split()[1:]
        assert colour in shapes.COLOURS and shape in shapes.SHAPES
        x, y, w, h = s.bbox
        assert (w, h) == (16, 16) and x % 16 == 0 and y % 16 == 0
    again = load_samples(heldout.write(tmp_path / "again", n=5))
    assert [(s.expression, s.bbox) for s in again] == [(s.expression, s.bbox) for s in samples]  # seeded
