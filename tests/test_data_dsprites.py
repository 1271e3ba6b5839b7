"""Procedural dSprites: latent grid, VTAB label rules, rendering geometry, splits."""

import itertools
import math

import numpy as np
import pytest

from vitssl.data import dsprites
from vitssl.data.source import open_dataset
from vitssl.data.tasks import load_task
from vitssl.errors import VitsslError


def _grid():
    """Every latent combination, in the original file's order (posY fastest)."""
    return list(itertools.product(
        range(3), range(6), range(40), range(32), range(32)))


def test_latent_grid_matches_an_independent_enumeration():
    grid = _grid()
    assert len(grid) == dsprites.NUM_IMAGES == 737_280
    rng = np.random.default_rng(1)
    scales = [0.5 + 0.1 * k for k in range(6)]
    orientations = [2 * math.pi * o / 39 for o in range(40)]
    for index in [0, 1, 31, 32, 1023, 1024, 737_279, *rng.integers(0, 737_280, 300).tolist()]:
        s, k, o, x, y = grid[index]
        assert dsprites.latent_indices(index) == (s, k, o, x, y)
        values = dsprites.latent_values(index)
        assert values["shape"] == ("square", "ellipse", "heart")[s]
        assert values["scale"] == pytest.approx(scales[k])
        assert values["orientation"] == pytest.approx(orientations[o])
        assert values["posX"] == pytest.approx(x / 31)
        assert values["posY"] == pytest.approx(y / 31)
    assert dsprites.latent_values(737_279)["orientation"] == pytest.approx(2 * math.pi)
    with pytest.raises(IndexError):
        dsprites.latent_indices(737_280)


def test_vtab_label_rules():
    grid = _grid()
    for index in range(0, 737_280, 997):
        _, _, o, x, _ = grid[index]
        assert dsprites.loc_label(index) == x // 2
        assert dsprites.ori_label(index) == math.floor(o / 2.5)
    # Every class 0..15 occurs, and the orientation bins hold 3 or 2 of the 40 values.
    ori = [math.floor(o / 2.5) for o in range(40)]
    assert sorted(set(ori)) == list(range(16))
    assert [dsprites.ori_label(np.ravel_multi_index((0, 0, o, 0, 0), dsprites.GRID))
            for o in range(40)] == ori
    assert sorted({dsprites.loc_label(np.ravel_multi_index((0, 0, 0, x, 0), dsprites.GRID))
                   for x in range(32)}) == list(range(16))


def _moments(image):
    ys, xs = np.nonzero(image)
    return xs + 0.5, ys + 0.5


def test_rendering_follows_the_latents():
    # Position: the sprite's centroid sits at 12 + 40 * pos (pixel centres at +0.5).
    for s, x, y in [(0, 0, 0), (0, 31, 5), (1, 10, 20), (2, 17, 31)]:
        index = np.ravel_multi_index((s, 5, 0, x, y), dsprites.GRID)
        image = dsprites.render(int(index))
        assert image.dtype == np.uint8 and set(np.unique(image)) <= {0, 255}
        xs, ys = _moments(image)
        assert abs(xs.mean() - (12 + 40 * x / 31)) < 1.0
        if s != 2:  # the heart is not symmetric top-to-bottom
            assert abs(ys.mean() - (12 + 40 * y / 31)) < 1.0
    # Scale: area grows with scale squared (square of side 1.4 * 12 * scale).
    for k in (0, 5):
        scale = 0.5 + 0.1 * k
        area = (dsprites.render(int(np.ravel_multi_index((0, k, 0, 16, 16), dsprites.GRID)))
                > 0).sum()
        assert abs(area - (1.4 * 12 * scale) ** 2) / area < 0.15
    # Orientation: the ellipse's long axis turns counter-clockwise on screen by theta.
    for o in (0, 4, 13, 27):
        theta = 2 * math.pi * o / 39
        xs, ys = _moments(dsprites.render(int(np.ravel_multi_index((1, 5, o, 16, 16),
                                                                   dsprites.GRID))))
        dx, dy = xs - xs.mean(), -(ys - ys.mean())  # y up
        cov = np.cov(np.stack([dx, dy]))
        axis = np.linalg.eigh(cov)[1][:, -1]
        angle = math.atan2(axis[1], axis[0]) % math.pi
        diff = abs(angle - theta % math.pi)
        assert min(diff, math.pi - diff) < 0.08


def test_splits_are_fixed_disjoint_and_vtab_sized():
    train800 = dsprites.split_indices("train800")
    val200 = dsprites.split_indices("val200")
    test = dsprites.split_indices("test")
    assert (len(train800), len(val200), len(test)) == (800, 200, 2000)
    assert not (set(train800) & set(val200)) and not (set(train800) | set(val200)) & set(test)
    assert np.array_equal(dsprites.split_indices("train"),
                          np.concatenate([train800, val200]))
    assert len(dsprites.split_indices("test", test_size=5000)) == 5000
    with pytest.raises(VitsslError, match="no split"):
        dsprites.split_indices("holdout")


def test_datasets_through_specs_and_tasks():
    loc = open_dataset("builtin:dsprites-loc:val200")
    ori = open_dataset("builtin:dsprites-ori", "val")
    assert len(loc) == len(ori) == 200 and loc.num_classes == ori.num_classes == 16
    image, label = loc[7]
    index = int(dsprites.split_indices("val200")[7])
    assert image.shape == (3, 64, 64) and image.dtype.is_floating_point is False
    assert np.array_equal(image[0].numpy(), dsprites.render(index))
    assert (image[0] == image[1]).all() and (image[1] == image[2]).all()
    assert label == dsprites.latent_indices(index)[3] // 2
    assert ori[7][1] == math.floor(dsprites.latent_indices(index)[2] / 2.5)
    task = load_task("builtin:dsprites-ori", 32)
    assert (task.num_classes, len(task.train), len(task.test)) == (16, 1000, 2000)
    assert task.train[0][0].shape == (3, 32, 32)


def test_plugins_listing_states_classes_sizes_and_licence(capsys):
    import json

    from vitssl.cli import main

    assert main(["plugins", "--json"]) == 0
    docs = {d["name"]: d["doc"] for d in json.loads(capsys.readouterr().out)["datasets"]}
    assert "16 classes" in docs["dsprites-loc"] and "Apache-2.0" in docs["dsprites-ori"]
    assert "CC0" in docs["photos"] and "10 classes" in docs["digits"]
