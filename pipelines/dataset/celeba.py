"""CelebA-HQ-style face crops: CelebA's in-the-wild photos and 5-point landmarks to aligned squares.

The crop follows the recipe of Karras et al. 2018 (ProGAN), appendix C. From the landmarks
(left eye, right eye, nose, left and right mouth corner, "left" meaning the image's left):

    eyes = mean of the eyes            eye_to_eye = right eye - left eye
    mouth = mean of the mouth corners  eye_to_mouth = mouth - eyes
    x = unit(eye_to_eye - rot90(eye_to_mouth)) * max(2.0 |eye_to_eye|, 1.8 |eye_to_mouth|)
    y = rot90(x)                       rot90((a, b)) = (-b, a), image coordinates (y down)
    centre = eyes + 0.1 eye_to_mouth

and the crop is the square centre ± x ± y: its side is 2 |x|. Both the eye line and the
eye-to-mouth line vote for the roll, so that neither alone decides it.

Coordinates are pixel indices, as CelebA's landmarks are: (x, y) is the centre of the pixel in
column x, row y. CropGeometry and its quad use that convention; PIL's transforms put pixel centres
at +0.5, and the quad is shifted by half a pixel only where it is handed to PIL. So a source point
p lands at output pixel (size - 1) / 2 + size / 2 * (dot(p - centre, x), dot(p - centre, y)) / |x|².

Borders. Where the square (plus a margin of a tenth of its side) leaves the photo, the photo is
mirrored outwards and the mirror image goes out of focus (a Gaussian blur, sigma a fiftieth of the
side: fully a twentieth of the side past the edge) and fades into the photo's median colour (fully
0.4 sides past the edge): CelebA-HQ's depth-of-field look instead of a sharp mirror image of the
face. Inside the photo only the last twentieth of the side before a padded edge is blended, at most
30% into the blur (at the edge pixel), so the seam does not show; the face itself is not touched.

Resampling. A square at least twice the output size across is first shrunk by an integer factor
(LANCZOS), so that it is less than twice the output; a square still larger than the output is
resampled by a bicubic QUAD transform at twice the output size and LANCZOS-reduced, so no step
skips source pixels (aliasing); a smaller one, the usual CelebA face, is upscaled by the bicubic
transform straight to the output size. Same input, same bytes. Measured on one CPU core: a 1024²
crop of a 160-320 px square in a 480x400 photo takes 55-80 ms (mostly the transform, the rest
the padding); a 2300 px square in a 2400x2200 photo about 0.6 s.

quality_score(image, landmarks), higher is better, for picking the best faces of a large set:

    log2(side) + 0.25 * log2(1 + var(laplacian(face)))

side is the crop's side in source pixels (a larger face needs less upscaling to 1024²). face is
the middle half of the aligned crop (eyes, nose and mouth, not the background) resampled in grey
to 128² with bilinear (after an integer box shrink when the source is at least twice that), and
laplacian is the 4-neighbour Laplacian of its interior 126². Halving the detail of a photo divides
the Laplacian's variance by about 16, hence 0.25: one octave of real detail counts as much as one
octave of face size. It costs about 0.5 ms for a 480x400 photo (less than decoding its JPEG)
and 5 ms for a 2400x2200 one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from trainers.data.storage import S3Url, read_bytes

LANDMARK_NAMES = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
# Crops narrower than this many source pixels are "too small": 1024² would be an 8x upscale.
MIN_FACE_SIDE = 128

_LANDMARK_HEADER = [f"{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy"]
_IMAGE_LIST_HEADER = ["idx", "orig_idx", "orig_file", "proc_md5", "final_md5"]
_SUPERSAMPLE = 2  # a quad larger than the output is resampled this much larger, then reduced
_MARGIN = 0.1  # photo kept around the square, in sides: the blur and the filters reach into it
_RIM = 0.05  # the seam: in sides, the blur fades in over this much on both sides of the edge...
_RIM_BLUR = 0.3  # ...reaching this weight at the photo's edge pixel and 1 a rim past it
_BLUR_SIGMA = 0.02  # of the padding's blur, in sides
_FADE = 0.4  # in sides: the padding is the photo's median colour this far past the edge
_QUALITY_SIZE = 128  # quality_score's grey face: the middle half of a 256² crop


class LandmarkFileError(ValueError):
    """list_landmarks_celeba.txt (or list_landmarks_align_celeba.txt) is not in CelebA's format."""


class ImageListError(ValueError):
    """CelebA-HQ's image_list.txt is not in its published format."""


def read_landmarks(path: Path | S3Url) -> list[tuple[str, np.ndarray]]:
    """CelebA's list_landmarks_celeba.txt (or the same-format list_landmarks_align_celeba.txt),
    in file order: (image file name, float32 [5, 2] (x, y) per LANDMARK_NAMES). The points are
    views into one float32 [N, 5, 2] array (8 MB for CelebA's 202,599 rows), parsed in under 1 s."""
    lines = _table_lines(path, LandmarkFileError)
    count = _integer(lines[0])
    if count is None:
        raise LandmarkFileError(f"{path} line 1: expected the number of images, got {lines[0]!r}")
    _check_header(path, lines, 2, _LANDMARK_HEADER, LandmarkFileError)
    rows = lines[2:]
    for number, row in enumerate(rows, 3):
        if len(row.split()) != 11:
            raise LandmarkFileError(
                f"{path} line {number}: expected a file name and 10 numbers, "
                f"got {len(row.split())} fields"
            )
    # One split of the whole table and one conversion: per-row lists cost 3x as much.
    tokens = " ".join(rows).split()
    names = tokens[0::11]
    del tokens[0::11]
    points = _landmark_numbers(path, rows, tokens).reshape(-1, 5, 2)
    _check_unique(path, names, range(3, len(rows) + 3), "file name", LandmarkFileError)
    if count != len(rows):
        raise LandmarkFileError(
            f"{path} line 1: says {count} images, but the file has {len(rows)} rows"
        )
    return list(zip(names, points, strict=True))


def read_image_list(path: Path | S3Url) -> list[tuple[int, str]]:
    """The official CelebA-HQ image_list.txt: (CelebA-HQ index, CelebA file name e.g.
    '119614.jpg'), sorted by index. Only idx and orig_file are used; the md5 columns describe
    the original authors' processing, which this module does not reproduce bit for bit."""
    lines = _table_lines(path, ImageListError)
    _check_header(path, lines, 1, _IMAGE_LIST_HEADER, ImageListError)
    indices, names = [], []
    for number, line in enumerate(lines[1:], 2):
        fields = line.split()
        if len(fields) != 5:
            raise ImageListError(
                f"{path} line {number}: expected 5 fields ({' '.join(_IMAGE_LIST_HEADER)}), "
                f"got {len(fields)}"
            )
        index = _integer(fields[0])
        if index is None:
            raise ImageListError(
                f"{path} line {number}: idx must be a non-negative integer, got {fields[0]!r}"
            )
        indices.append(index)
        names.append(fields[2])
    numbers = range(2, len(indices) + 2)
    _check_unique(path, indices, numbers, "idx", ImageListError)
    _check_unique(path, names, numbers, "orig_file", ImageListError)
    return sorted(zip(indices, names, strict=True))


def _table_lines(path: Path | S3Url, error: type[ValueError]) -> list[str]:
    """The file's lines, trailing blank ones dropped (CelebA's files end with a newline)."""
    try:
        lines = read_bytes(path).decode("utf-8").splitlines()
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not a text file ({problem})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise error(f"{path}: the file is empty")
    return lines


def _integer(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def _check_header(
    path: Path | S3Url, lines: list[str], number: int, expected: list[str], error: type[ValueError]
) -> None:
    found = lines[number - 1].split() if len(lines) >= number else []
    if found != expected:
        raise error(
            f"{path} line {number}: expected the header {' '.join(expected)!r}, "
            f"got {' '.join(found)!r}"
        )


def _landmark_numbers(path: Path | S3Url, rows: list[str], numbers: list[str]) -> np.ndarray:
    """float32 [N * 10] of the rows' numbers; a value that is not a finite number is an error
    naming its line (found by a second, slower pass that only runs on a bad file)."""
    try:
        values = np.array(numbers, dtype=np.float32)
        if np.isfinite(values).all():
            return values
    except ValueError:
        pass
    for number, row in enumerate(rows, 3):
        for value in row.split()[1:]:
            try:
                if math.isfinite(float(value)):
                    continue
            except ValueError:
                pass
            raise LandmarkFileError(f"{path} line {number}: {value!r} is not a finite number")
    raise AssertionError("numpy refused a value that float() accepts")


def _check_unique(
    path: Path | S3Url, keys: list, numbers: range, what: str, error: type[ValueError]
) -> None:
    if len(set(keys)) == len(keys):
        return
    seen: dict = {}
    for key, number in zip(keys, numbers, strict=True):
        if key in seen:
            raise error(f"{path} line {number}: {what} {key!r} is already on line {seen[key]}")
        seen[key] = number


@dataclass(frozen=True, eq=False)  # eq=False: a generated == would compare arrays ambiguously
class CropGeometry:
    """The oriented crop square in source pixel coordinates (pixel indices, as the landmarks)."""

    center: np.ndarray  # (2,)
    x: np.ndarray  # (2,) half-side vector towards the image's right of the face: the crop's +x
    y: np.ndarray  # (2,) half-side vector down the face: the crop's +y

    @property
    def side(self) -> float:
        """The crop's side in source pixels: how much detail the 1024² crop has to start from."""
        return 2 * math.hypot(*self.x)

    def quad(self) -> np.ndarray:
        """[4, 2] corners: top-left, bottom-left, bottom-right, top-right (PIL's QUAD order)."""
        c, x, y = self.center, self.x, self.y
        return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def crop_geometry(landmarks: np.ndarray) -> CropGeometry:
    """The ProGAN recipe's square (see the module docstring) for [5, 2] landmarks."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2) or not np.isfinite(points).all():
        raise ValueError(f"landmarks must be 5 finite (x, y) points, got {landmarks!r}")
    eyes, mouth = points[:2].mean(axis=0), points[3:].mean(axis=0)
    eye_to_eye, eye_to_mouth = points[1] - points[0], mouth - eyes
    direction = eye_to_eye - _rot90(eye_to_mouth)
    length = math.hypot(*direction)
    if length == 0:
        raise ValueError(f"landmarks give the face no orientation: {points.tolist()}")
    half_side = max(2.0 * math.hypot(*eye_to_eye), 1.8 * math.hypot(*eye_to_mouth))
    x = direction * (half_side / length)
    return CropGeometry(center=eyes + 0.1 * eye_to_mouth, x=x, y=_rot90(x))


def _rot90(vector: np.ndarray) -> np.ndarray:
    """A quarter turn clockwise as seen on screen (image y points down): right becomes down."""
    return np.array([-vector[1], vector[0]])


def oriented_crop(image: Image.Image, landmarks: np.ndarray, size: int = 1024) -> Image.Image:
    """The CelebA-HQ-style aligned face: RGB size x size (see the module docstring)."""
    quad = crop_geometry(landmarks).quad() + 0.5  # PIL's coordinates: pixel centres at +0.5
    region, quad = _source(image, quad, size, "RGB", Image.Resampling.LANCZOS)
    side = _side(quad)
    overhang = _overhang(quad, _margin(side), region.size)
    if overhang.any():
        region, quad = _soft_pad(region, overhang, side), quad + overhang[:2]
    # Sampling a larger quad straight at size² would skip source pixels (alias); upscaling would
    # only be blurred by a detour through a larger image, and costs 5x.
    supersample = _SUPERSAMPLE if side > size else 1
    crop = region.transform(
        (supersample * size,) * 2,
        Image.Transform.QUAD,
        tuple(quad.ravel()),
        Image.Resampling.BICUBIC,
    )
    return crop if supersample == 1 else crop.resize((size, size), Image.Resampling.LANCZOS)


def quality_score(image: Image.Image, landmarks: np.ndarray) -> float:
    """How good a CelebA-HQ face this photo makes: higher is better (formula in the module
    docstring). Looks at a 128² grey crop only, so it costs milliseconds."""
    geometry = crop_geometry(landmarks)
    middle = CropGeometry(geometry.center, geometry.x / 2, geometry.y / 2)
    region, quad = _source(image, middle.quad() + 0.5, _QUALITY_SIZE, "L", Image.Resampling.BOX)
    left, top, right, bottom = _overhang(quad, _margin(_side(quad)), region.size)
    if left or top or right or bottom:  # mirrored: a hard edge to black would read as detail
        pixels = np.pad(np.asarray(region), ((top, bottom), (left, right)), mode="symmetric")
        region, quad = Image.fromarray(pixels), quad + (left, top)
    face = region.transform(
        (_QUALITY_SIZE,) * 2, Image.Transform.QUAD, tuple(quad.ravel()), Image.Resampling.BILINEAR
    )
    grey = np.asarray(face, dtype=np.float32)
    laplacian = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4 * grey[1:-1, 1:-1]
    )
    return math.log2(geometry.side) + 0.25 * math.log2(1 + float(laplacian.var()))


def _side(quad: np.ndarray) -> float:
    return math.dist(quad[0], quad[3])


def _margin(side: float) -> float:
    """Photo to keep around a square of this side: 3 px at least, for the bicubic filter."""
    return max(3.0, _MARGIN * side)


def _bounds(quad: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer (left, top) and (right, bottom) of the quad's bounding box grown by margin."""
    low = np.floor(quad.min(axis=0) - margin).astype(int)
    high = np.ceil(quad.max(axis=0) + margin).astype(int)
    return low, high


def _overhang(quad: np.ndarray, margin: float, size: tuple[int, int]) -> np.ndarray:
    """[left, top, right, bottom] pixels by which the quad plus margin leaves a size image."""
    low, high = _bounds(quad, margin)
    return np.maximum(0, np.r_[-low, high - np.array(size)])


def _source(
    image: Image.Image, quad: np.ndarray, target: int, mode: str, resample: Image.Resampling
) -> tuple[Image.Image, np.ndarray]:
    """The part of `image` the quad and its margin cover, in `mode`, with the quad moved onto it.
    A quad at least twice `target` pixels across is shrunk by an integer factor first, so that
    resampling it to target² does not alias; only the part is converted and shrunk, not the photo.
    """
    side = _side(quad)
    shrink = int(side // target)
    low, high = _bounds(quad, _margin(side) + 3 * shrink)  # 3 * shrink: LANCZOS's reach
    left, top = np.maximum(low, 0)
    right, bottom = np.minimum(high, image.size)
    if left >= right or top >= bottom:
        raise ValueError(
            f"the landmarks put the face crop outside the {image.width}x{image.height} image"
        )
    region = image.crop((left, top, right, bottom)).convert(mode)
    quad = quad - (left, top)
    if shrink < 2:
        return region, quad
    smaller = (max(1, round(region.width / shrink)), max(1, round(region.height / shrink)))
    # PIL's resize maps edge to edge, so the quad scales by the exact ratio on each axis.
    return region.resize(smaller, resample), quad * (np.array(smaller) / region.size)


def _soft_pad(region: Image.Image, overhang: np.ndarray, side: float) -> Image.Image:
    """region mirrored outwards by overhang [left, top, right, bottom] pixels, the mirrored part
    going out of focus and then into the region's median colour (see the module docstring)."""
    left, top, right, bottom = (int(n) for n in overhang)
    photo = np.asarray(region)
    padded = np.pad(photo, ((top, bottom), (left, right), (0, 0)), mode="symmetric")
    blur = ImageFilter.GaussianBlur(_BLUR_SIGMA * side)
    blurred = np.asarray(Image.fromarray(padded).filter(blur), dtype=np.float32)
    distance = np.maximum(
        _edge_distance(photo.shape[0], top, bottom)[:, None],
        _edge_distance(photo.shape[1], left, right)[None, :],
    )  # [H, W] pixels past the photo's padded edges
    rim = np.clip(distance / max(1.0, _RIM * side), -1, 1)
    blur_weight = np.where(rim > 0, _RIM_BLUR + (1 - _RIM_BLUR) * rim, _RIM_BLUR * (1 + rim))
    median_weight = np.clip(distance / (_FADE * side), 0, 1)
    median = np.median(photo.reshape(-1, 3), axis=0).astype(np.float32)
    pixels = padded.astype(np.float32)
    pixels += (blurred - pixels) * blur_weight[..., None]
    pixels += (median - pixels) * median_weight[..., None]
    return Image.fromarray(np.rint(pixels).astype(np.uint8))  # convex blends stay in 0..255


def _edge_distance(length: int, before: int, after: int) -> np.ndarray:
    """Along one axis of a photo padded by before and after pixels, float32 [before + length +
    after]: how far each pixel is past the nearer padded edge (0 on the photo's edge pixel,
    negative inside, -inf everywhere when neither side is padded)."""
    position = np.arange(-before, length + after, dtype=np.float32)  # photo pixel index
    distance = np.full(position.shape, -np.inf, dtype=np.float32)
    if before:
        distance = np.maximum(distance, -position)
    if after:
        distance = np.maximum(distance, position - (length - 1))
    return distance
