import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipelines.dataset.synthetic import HAIR_STYLES, draw, render_face, sample_params


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def params(seed: int, index: int):
    return sample_params(np.random.Generator(np.random.PCG64([seed, index])))


def test_same_inputs_give_identical_bytes():
    assert render_face(7, 3, 64).tobytes() == render_face(7, 3, 64).tobytes()


def test_render_face_is_draw_of_params_keyed_by_seed_and_index():
    assert render_face(7, 3, 32).tobytes() == draw(params(7, 3), 32).tobytes()


def test_identical_in_a_fresh_process_with_another_hash_seed():
    code = (
        "import hashlib; from pipelines.dataset.synthetic import render_face; "
        "print(hashlib.sha256(render_face(11, 5, 64).tobytes()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == hashlib.sha256(render_face(11, 5, 64).tobytes()).hexdigest()


def test_index_and_seed_change_the_face():
    base = render_face(0, 0, 32).tobytes()
    assert render_face(0, 1, 32).tobytes() != base
    assert render_face(1, 0, 32).tobytes() != base


@pytest.mark.parametrize("size", [4, 8, 64, 1024])
def test_rgb_at_the_requested_size(size):
    img = render_face(0, 2, size)
    assert img.mode == "RGB"
    assert img.size == (size, size)


@pytest.mark.parametrize("size", [0, 2, 48, 2048])
def test_rejects_sizes_that_are_not_supported_powers_of_two(size):
    with pytest.raises(ValueError):
        render_face(0, 0, size)


def test_same_face_at_every_size():
    same, other = [], []
    for index in range(6):
        small = pixels(render_face(4, index, 32))
        shrunk = pixels(render_face(4, index, 256).resize((32, 32), Image.BOX))
        same.append(np.abs(shrunk - small).mean())
        other.append(np.abs(pixels(render_face(4, index + 50, 32)) - small).mean())
    assert max(same) < 6
    assert min(other) > 20


def test_variety_across_faces():
    faces = [params(0, i) for i in range(64)]
    luminance = [pixels(render_face(0, i, 16).convert("L")).mean() for i in range(64)]
    assert np.std(luminance) > 8
    with_glasses = sum(bool(p.glasses) for p in faces)
    assert 0 < with_glasses < 64
    assert len({p.hair_style for p in faces}) >= len(HAIR_STYLES) - 1
    assert len({p.mouth_open > 0 for p in faces}) == 2
    skin = [np.mean(p.skin) for p in faces]
    assert max(skin) - min(skin) > 80  # light to dark skin tones
