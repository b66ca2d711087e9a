"""The teacher's view of the image each iteration: roll, flip and optional random-resized crops (dfgen.jitter)."""

import torch

from dfgen.jitter import draw_stage_jitter


def test_the_same_seed_draws_the_same_jitter_and_flips_do_not_change_the_rolls():
    draw = lambda flip, crops: draw_stage_jitter(torch.Generator().manual_seed(5), 50, 32, 0.125, flip, crops)  # noqa: E731
    a, b = draw(True, None), draw(True, None)
    assert a.shifts == b.shifts and a.flips == b.flips
    assert draw(False, None).shifts == a.shifts and not any(draw(False, None).flips)
    assert max(abs(v) for pair in a.shifts for v in pair) <= 4 and any(a.flips)
    assert draw(True, 0.25).shifts == a.shifts and draw(True, 0.25).flips == a.flips


def test_crops_stay_inside_the_image_and_get_harder_over_the_stage():
    jitter = draw_stage_jitter(torch.Generator().manual_seed(0), 200, 32, 0.0, False, 0.25)
    areas = []
    for top, left, height, width in jitter.crops:
        assert 0 <= top and top + height <= 32 and 0 <= left and left + width <= 32
        areas.append(height * width / 32 ** 2)
    assert min(areas[:10]) > 0.8  # the curriculum starts with (nearly) the whole image (aspect ratio trims it)
    assert min(areas[-50:]) < 0.5 and min(areas) >= 0.25 * 0.8  # and ends near the smallest scale (ratio rounding)


def test_view_rolls_flips_and_resizes_back():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    jitter = draw_stage_jitter(torch.Generator().manual_seed(0), 3, 4, 0.0, False, None)
    jitter.shifts[0], jitter.flips[0] = [1, 0], True
    expected = torch.roll(x, shifts=(1, 0), dims=(2, 3)).flip(3)
    assert torch.equal(jitter.view(x, 0, 4), expected)
    jitter.crops = [(0, 0, 2, 2)] * 3
    assert jitter.view(x, 1, 4).shape == (1, 1, 4, 4)
