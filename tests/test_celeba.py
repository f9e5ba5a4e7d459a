"""celeba: CelebA's landmark and image-list files, the CelebA-HQ crop and the quality score, on
in-the-wild scenes from tests/scenes. Expected crop positions come from the ProGAN recipe written
out again here (recipe()), never from the module's own crop_geometry."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipelines.dataset import celeba
from tests.scenes import MARKER_COLORS, Scene, write_celeba_inputs

LANDMARKS = "list_landmarks_celeba.txt"
HEADER = (
    "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
    "leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
)
SIZE = 1024
TOLERANCE = 3.0  # output pixels


def recipe(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """ProGAN appendix C for [5, 2] landmarks: the square's centre, its unit +x axis and half its
    side, all in source pixels."""
    points = np.asarray(landmarks, dtype=np.float64)
    eyes, mouth = points[:2].mean(axis=0), points[3:].mean(axis=0)
    eye_to_eye, eye_to_mouth = points[1] - points[0], mouth - eyes
    axis = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])  # minus rot90(eye_to_mouth)
    half = max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth))
    return eyes + 0.1 * eye_to_mouth, axis / np.hypot(*axis), half


def to_crop(points: np.ndarray, landmarks: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Source pixel (x, y) -> output pixel in a size² crop: the centre lands on pixel
    (size - 1) / 2 and half a side spans size / 2 pixels."""
    centre, axis, half = recipe(landmarks)
    down = np.array([-axis[1], axis[0]])
    relative = np.asarray(points, dtype=np.float64) - centre
    return (size - 1) / 2 + size / 2 * np.stack([relative @ axis, relative @ down], -1) / half


def to_source(points: np.ndarray, landmarks: np.ndarray, size: int = SIZE) -> np.ndarray:
    """The inverse of to_crop."""
    centre, axis, half = recipe(landmarks)
    down = np.array([-axis[1], axis[0]])
    unit = (np.asarray(points, dtype=np.float64) - (size - 1) / 2) / (size / 2) * half
    return centre + unit[..., :1] * axis + unit[..., 1:] * down


def marker_centroids(crop: Image.Image, expected: np.ndarray, reach: int = 48) -> np.ndarray:
    """[5, 2] (x, y): for each landmark, the centroid of its marker's pure colour within `reach`
    pixels of where it is expected (weighted by how pure, so the disc's soft rim stays
    symmetric)."""
    pixels = np.asarray(crop, dtype=np.int32)
    found = []
    for (x, y), color in zip(expected, MARKER_COLORS, strict=True):
        channel = color.index(255)
        left, top = max(0, round(x) - reach), max(0, round(y) - reach)
        window = pixels[top : round(y) + reach + 1, left : round(x) + reach + 1]
        others = np.delete(window, channel, axis=2).max(axis=2)
        weight = np.clip(window[..., channel] - others - 150, 0, None).astype(np.float64)
        assert weight.sum() > 0, f"no marker within {reach} px of {x:.0f}, {y:.0f}"
        rows, columns = np.indices(weight.shape)
        found.append(
            [
                left + (weight * columns).sum() / weight.sum(),
                top + (weight * rows).sum() / weight.sum(),
            ]
        )
    return np.array(found)


def assert_aligned(crop: Image.Image, landmarks: np.ndarray, name: str) -> None:
    expected = to_crop(landmarks, landmarks, crop.width)
    found = marker_centroids(crop, expected)
    error = np.abs(found - expected).max()
    assert error <= TOLERANCE, f"{name}: markers {error:.1f} px from the recipe's positions"
    eye_line = found[1] - found[0]
    assert eye_line[0] > 0, f"{name}: the right eye is not on the right"
    assert abs(math.degrees(math.atan2(eye_line[1], eye_line[0]))) < 2.0, f"{name}: not level"
    assert found[3:, 1].min() > found[:2, 1].max(), f"{name}: the mouth is not below the eyes"


def leaves(scene_size: tuple[int, int], landmarks: np.ndarray) -> bool:
    """Whether the recipe's square reaches past the photo's edge (so the crop needs padding)."""
    corners = to_source(np.array([[0, 0], [0, SIZE], [SIZE, SIZE], [SIZE, 0]]) - 0.5, landmarks)
    return bool((corners.min(axis=0) < 0).any() or (corners.max(axis=0) > scene_size).any())


@pytest.fixture(scope="module")
def wild(tmp_path_factory) -> tuple[Path, list[Scene], dict[str, np.ndarray]]:
    """Eight marked scenes (rolls up to ±25°, crop sides 160..320 px, anywhere in the photo:
    half of the squares reach past its edge) and their landmarks as read back from the file."""
    root = tmp_path_factory.mktemp("wild")
    scenes = write_celeba_inputs(root, 8, seed=12, scene_size=(640, 560), markers=True)
    return root, scenes, dict(celeba.read_landmarks(root / LANDMARKS))


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> tuple[Path, list[Scene]]:
    root = tmp_path_factory.mktemp("plain")
    return root, write_celeba_inputs(root, 4, seed=11)


def photo(root: Path, scene: Scene) -> Image.Image:
    with Image.open(root / "img_celeba" / scene.name) as image:
        return image.convert("RGB")


def test_landmark_file_is_celebas_format_and_reads_back_exactly(wild):
    root, scenes, rows = wild
    lines = (root / LANDMARKS).read_text().splitlines()
    assert lines[:2] == ["8", HEADER]
    assert re.fullmatch(r"000001\.jpg( +\d+){10}", lines[2])
    assert list(rows) == [scene.name for scene in scenes]
    for scene in scenes:
        assert rows[scene.name].dtype == np.float32 and rows[scene.name].shape == (5, 2)
        assert np.array_equal(rows[scene.name], scene.landmarks)
        assert np.array_equal(scene.landmarks, np.rint(scene.landmarks))  # integers, as CelebA's


def test_crop_puts_every_landmark_where_the_recipe_says_and_the_face_upright(wild):
    root, scenes, rows = wild
    angles = [scene.angle for scene in scenes]
    assert max(angles) > 20 and min(angles) < -20  # strong rolls both ways are covered
    sides = [2 * recipe(rows[scene.name])[2] for scene in scenes]
    assert min(sides) >= celeba.MIN_FACE_SIDE and max(sides) / min(sides) > 1.4
    padded = [leaves(photo(root, scene).size, rows[scene.name]) for scene in scenes]
    assert any(padded) and not all(padded)  # faces at the photo's edge and well inside it
    for scene in scenes:
        crop = celeba.oriented_crop(photo(root, scene), rows[scene.name], SIZE)
        assert crop.mode == "RGB" and crop.size == (SIZE, SIZE)
        assert_aligned(crop, rows[scene.name], scene.name)


@pytest.fixture(scope="module")
def at_the_edge(wild) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A marked face whose photo ends just left of its eyes and mouth (nothing else near), the
    landmarks there, and the output box [x0, y0, x1, y1] that spans the five landmarks."""
    root, scenes, rows = wild
    # One whose square is inside its photo, so that the mirroring below adds nothing to the crop.
    scene = next(s for s in scenes if not leaves(photo(root, s).size, rows[s.name]))
    landmarks = rows[scene.name].astype(np.float64)
    # Mirrored far out on every side first, so that the cut is the only edge the crop meets.
    pixels = np.pad(np.asarray(photo(root, scene)), ((600, 600), (600, 600), (0, 0)), "symmetric")
    landmarks += 600
    expected = to_crop(landmarks, landmarks)
    box = np.r_[expected.min(axis=0) - 20, expected.max(axis=0) + 20]
    corners = to_source(box[[0, 1, 0, 3, 2, 3, 2, 1]].reshape(4, 2), landmarks)
    half = recipe(landmarks)[2]
    # Clear of the rim that fades into the blur (a tenth of half a side) and of the filters' reach.
    cut = math.floor(corners[:, 0].min() - 0.1 * half - 6)
    landmarks[:, 0] -= cut
    return Image.fromarray(pixels[:, cut:]), landmarks.astype(np.float32), np.rint(box).astype(int)


def test_face_at_the_photo_edge_aligns_with_a_soft_border_and_an_untouched_face(at_the_edge):
    image, landmarks, (x0, y0, x1, y1) = at_the_edge
    centre, axis, half = recipe(landmarks)
    assert centre[0] - half * (abs(axis[0]) + abs(axis[1])) < -0.3 * half  # much of it is padding
    soft = celeba.oriented_crop(image, landmarks, SIZE)
    assert_aligned(soft, landmarks, "cut photo")

    # The same crop with the padding done beforehand by plain mirroring: the crop needs none.
    width = math.ceil(2 * half)
    mirrored = np.pad(np.asarray(image), ((0, 0), (width, 0), (0, 0)), "symmetric")
    plain = celeba.oriented_crop(Image.fromarray(mirrored), landmarks + (width, 0), SIZE)
    soft, plain = np.asarray(soft, dtype=np.float64), np.asarray(plain, dtype=np.float64)

    face = np.abs(soft - plain)[y0:y1, x0:x1]
    assert face.size and face.max() <= 1  # the face is the photo's, untouched
    source_x = to_source(np.stack(np.indices((SIZE, SIZE))[::-1], -1), landmarks)[..., 0]
    padding = source_x < -0.1 * half  # well past the photo's edge
    assert padding.mean() > 0.1
    assert np.abs(soft - plain)[padding].mean() > 10  # not a plain mirror image...
    assert roughness(soft, padding) < 0.3 * roughness(plain, padding)  # ...but out of focus...
    # ...and just past the edge it carries on from the photo: a mirror image going out of focus.
    blurred = Image.fromarray(plain.astype(np.uint8)).filter(ImageFilter.GaussianBlur(SIZE / 50))
    band = (source_x < -0.02 * half) & (source_x > -0.1 * half)
    assert np.abs(soft - np.asarray(blurred, dtype=np.float64))[band].mean() < 16


def roughness(pixels: np.ndarray, where: np.ndarray) -> float:
    """Mean absolute 4-neighbour Laplacian (all channels) over the pixels in `where`, measured on
    4x4 block means: detail at the face's scale, not the smoothness of a 4x upscale."""
    size = pixels.shape[0] // 4
    blocks = pixels.reshape(size, 4, size, 4, -1).mean(axis=(1, 3))
    inside = where.reshape(size, 4, size, 4).all(axis=(1, 3))
    laplacian = (
        blocks[:-2, 1:-1] + blocks[2:, 1:-1] + blocks[1:-1, :-2] + blocks[1:-1, 2:]
    ) - 4 * blocks[1:-1, 1:-1]
    return float(np.abs(laplacian)[inside[1:-1, 1:-1]].mean())


def test_same_input_gives_identical_bytes(at_the_edge):
    image, landmarks, _ = at_the_edge
    first = celeba.oriented_crop(image, landmarks, SIZE).tobytes()
    assert celeba.oriented_crop(image.copy(), landmarks.copy(), SIZE).tobytes() == first


def test_huge_face_is_shrunk_first_and_still_aligns(tmp_path):
    (scene,) = write_celeba_inputs(
        tmp_path, 1, seed=5, face_side=(2300, 2300), scene_size=(2400, 2200), markers=True
    )
    assert 2 * recipe(scene.landmarks)[2] > 2 * SIZE
    crop = celeba.oriented_crop(photo(tmp_path, scene), scene.landmarks, SIZE)
    assert crop.size == (SIZE, SIZE)
    assert_aligned(crop, scene.landmarks, scene.name)


@pytest.mark.parametrize("eye_distance", [128, 256])  # crops of 512 and 1024 px to 256²
def test_detail_finer_than_the_output_averages_out_instead_of_aliasing(eye_distance):
    """A one-pixel checkerboard is flat grey at any reduction; resampling that skips source
    pixels (no supersampling at 2x, no shrink at 4x) turns it into moiré."""
    board = (np.indices((1400, 1400)).sum(axis=0) % 2 * 255).astype(np.uint8)
    cos, sin = math.cos(math.radians(10)), math.sin(math.radians(10))  # a roll, for moiré
    right, down = np.array([cos, -sin]) * eye_distance / 2, np.array([sin, cos]) * eye_distance / 2
    centre = np.array([700.0, 700.0])
    landmarks = centre + np.array(
        [-right, right, 0.9 * down, 1.7 * down - 0.6 * right, 1.7 * down + 0.6 * right]
    )
    assert 2 * recipe(landmarks)[2] == pytest.approx(4 * eye_distance)
    crop = celeba.oriented_crop(Image.fromarray(board).convert("RGB"), landmarks, 256)
    assert np.asarray(crop, dtype=np.float64).std() < 2


def test_small_output_sizes_align_too(wild):
    root, scenes, rows = wild
    crop = celeba.oriented_crop(photo(root, scenes[1]), rows[scenes[1].name], 256)
    assert crop.size == (256, 256)
    expected = to_crop(rows[scenes[1].name], rows[scenes[1].name], 256)
    found = marker_centroids(crop, expected, reach=12)
    assert np.abs(found - expected).max() <= 1.0


def test_landmarks_outside_the_photo_are_an_error_not_a_blank_crop():
    image = Image.new("RGB", (100, 80))
    far = np.array([[500, 500], [540, 500], [520, 520], [505, 540], [535, 540]], np.float32)
    with pytest.raises(ValueError, match="outside the 100x80 image"):
        celeba.oriented_crop(image, far)
    with pytest.raises(ValueError, match="5 finite"):
        celeba.crop_geometry(np.zeros((4, 2)))


def test_crop_geometry_is_the_recipe_square_in_pil_quad_order():
    landmarks = np.array([[69, 109], [106, 113], [77, 142], [73, 152], [108, 154]], np.float32)
    geometry = celeba.crop_geometry(landmarks)
    centre, axis, half = recipe(landmarks)
    assert np.allclose(geometry.center, centre) and np.allclose(geometry.x, axis * half)
    assert np.allclose(geometry.y, [-axis[1] * half, axis[0] * half])
    assert geometry.side == pytest.approx(2 * half)
    top_left, bottom_left, bottom_right, top_right = geometry.quad()
    assert np.allclose(top_left, centre - geometry.x - geometry.y)
    assert np.allclose(bottom_left, centre - geometry.x + geometry.y)
    assert np.allclose(bottom_right, centre + geometry.x + geometry.y)
    assert np.allclose(top_right, centre + geometry.x - geometry.y)


ROWS = [
    "000001.jpg    69  109  106  113   77  142   73  152  108  154",
    "000002.jpg    69  110  107  112   81  135   70  151  108  153",
    "000003.jpg    76  112  104  106  108  128   74  156   98  158",
]


def landmark_text(rows: list[str], count: object = None, header: str = HEADER) -> str:
    return "\n".join([str(len(rows) if count is None else count), header, *rows]) + "\n"


def test_landmark_file_reads_in_order_with_trailing_blank_lines_and_crlf(tmp_path):
    path = tmp_path / LANDMARKS
    path.write_bytes(("\r\n".join(["3", HEADER + " ", *ROWS]) + "\r\n\r\n  \r\n").encode())
    rows = celeba.read_landmarks(path)
    assert [name for name, _ in rows] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert rows[0][1].tolist() == [[69, 109], [106, 113], [77, 142], [73, 152], [108, 154]]
    assert rows[2][1].dtype == np.float32 and rows[2][1][4].tolist() == [98, 158]


@pytest.mark.parametrize(
    "text, message",
    [
        ("\n\n", "the file is empty"),
        ("3\n", "line 2: expected the header 'lefteye_x .*', got ''"),
        (landmark_text(ROWS, "many"), "line 1: expected the number of images, got 'many'"),
        (landmark_text(ROWS, header=HEADER.replace("nose_y", "nose_z")), "line 2: expected the h"),
        (landmark_text([ROWS[0], ROWS[1].rsplit(maxsplit=1)[0], ROWS[2]]), "line 4: .* got 10"),
        (landmark_text([*ROWS[:2], ROWS[2] + " 7"]), "line 5: .* 10 numbers, got 12 fields"),
        (landmark_text([ROWS[0], "", ROWS[2]]), "line 4: .* got 0 fields"),
        (landmark_text([ROWS[0], ROWS[1].replace("107", "1O7"), ROWS[2]]), "line 4: '1O7' is not"),
        (landmark_text([*ROWS[:2], ROWS[2].replace("128", "nan")]), "line 5: 'nan' is not"),
        (landmark_text([*ROWS, ROWS[1]]), "line 6: file name '000002.jpg' is already on line 4"),
        (landmark_text(ROWS, 4), "line 1: says 4 images, but the file has 3 rows"),
    ],
)
def test_malformed_landmark_file_names_the_file_and_line(tmp_path, text, message):
    (path := tmp_path / LANDMARKS).write_text(text)
    with pytest.raises(celeba.LandmarkFileError, match=message) as error:
        celeba.read_landmarks(path)
    assert str(error.value).startswith(str(path))


def test_all_of_celebas_202599_rows_parse_quickly(tmp_path):
    count = 202_599
    values = np.random.default_rng(0).integers(0, 500, (count, 10))
    rows = [
        f"{i + 1:06d}.jpg " + "".join(f" {v:4d}" for v in row)
        for i, row in enumerate(values.tolist())
    ]
    (path := tmp_path / LANDMARKS).write_text(landmark_text(rows))
    start = time.perf_counter()
    parsed = celeba.read_landmarks(path)
    assert time.perf_counter() - start < 5.0
    assert len(parsed) == count and parsed[-1][0] == "202599.jpg"
    assert np.array_equal(parsed[-1][1].ravel(), values[-1])
    assert np.array_equal(parsed[123_456][1].ravel(), values[123_456])


IMAGE_LIST_HEADER = "idx         orig_idx    orig_file   proc_md5    final_md5"


def image_list(path: Path, rows: list[str], header: str = IMAGE_LIST_HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def image_row(index: int, name: str) -> str:
    return f"{index:<11} {int(name.split('.')[0]) - 1:<11} {name:<11} {'a1' * 16} {'0f' * 16}"


def test_image_list_reads_index_and_file_sorted_by_index(tmp_path):
    rows = [image_row(2, "000010.jpg"), image_row(0, "119614.jpg"), image_row(1, "000003.jpg")]
    path = image_list(tmp_path / "image_list.txt", rows)
    assert celeba.read_image_list(path) == [(0, "119614.jpg"), (1, "000003.jpg"), (2, "000010.jpg")]


@pytest.mark.parametrize(
    "rows, header, message",
    [
        ([image_row(0, "000001.jpg")], "idx orig_file", "line 1: expected the header"),
        ([image_row(0, "000001.jpg"), "1 5 000006.jpg abc"], None, "line 3: expected 5 fields"),
        (["x 5 000006.jpg a b"], None, "line 2: idx must be a non-negative integer, got 'x'"),
        (["-1 5 000006.jpg a b"], None, "line 2: idx must be a non-negative integer"),
        (
            [image_row(0, "000001.jpg"), image_row(1, "000002.jpg"), image_row(0, "000003.jpg")],
            None,
            "line 4: idx 0 is already on line 2",
        ),
        (
            [image_row(0, "000001.jpg"), image_row(1, "000001.jpg")],
            None,
            "line 3: orig_file '000001.jpg' is already on line 2",
        ),
    ],
)
def test_malformed_image_list_names_the_line(tmp_path, rows, header, message):
    path = image_list(tmp_path / "image_list.txt", rows, header or IMAGE_LIST_HEADER)
    with pytest.raises(celeba.ImageListError, match=message):
        celeba.read_image_list(path)


def test_empty_image_list_is_an_error(tmp_path):
    (path := tmp_path / "image_list.txt").write_text("")
    with pytest.raises(celeba.ImageListError, match="empty"):
        celeba.read_image_list(path)


def test_blurring_a_photo_lowers_its_quality_score(plain):
    root, scenes = plain
    for scene in scenes:
        sharp = photo(root, scene)
        scores = [
            celeba.quality_score(sharp.filter(ImageFilter.GaussianBlur(radius)), scene.landmarks)
            for radius in (0, 1, 2.5)
        ]
        assert scores[0] > scores[1] > scores[2], scene.name


def test_a_larger_copy_of_a_face_scores_at_least_as_high(plain):
    root, scenes = plain
    for scene in scenes:
        small = photo(root, scene)
        large = small.resize((2 * small.width, 2 * small.height), Image.Resampling.BICUBIC)
        # Pixel index p covers [p, p + 1); twice as large, its centre is at 2p + 0.5.
        landmarks = 2 * scene.landmarks + 0.5
        assert celeba.quality_score(large, landmarks) >= celeba.quality_score(
            small, scene.landmarks
        )


def test_quality_score_ignores_everything_but_the_face(plain):
    """Noise over the whole photo outside the circle inscribed in the crop square leaves the
    score exactly as it was."""
    root, scenes = plain
    scene = scenes[0]
    image = photo(root, scene)
    centre, _, half = recipe(scene.landmarks)
    rows, columns = np.indices(image.size[::-1])
    outside = np.hypot(columns - centre[0], rows - centre[1]) > half
    noisy = np.asarray(image).copy()
    noise = np.random.default_rng(0).integers(0, 256, noisy.shape, dtype=np.uint8)
    noisy[outside] = noise[outside]
    assert outside.mean() > 0.3
    score = celeba.quality_score(image, scene.landmarks)
    assert celeba.quality_score(Image.fromarray(noisy), scene.landmarks) == score
    noisy[~outside] = noise[~outside]  # and the same noise on the face does count
    assert celeba.quality_score(Image.fromarray(noisy), scene.landmarks) > score + 0.5
