"""CelebA-style in-the-wild inputs without the real data: a synthetic face (pipelines.dataset.
synthetic) pasted into a larger textured photo at a known position, size and roll, and a
list_landmarks_celeba.txt in CelebA's exact format pointing at its eyes, nose and mouth corners."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipelines.dataset.celeba import LANDMARK_NAMES, crop_geometry
from pipelines.dataset.synthetic import _EYE_V, render_face, sample_params

# markers=True: eyes red, nose green, mouth corners blue, in LANDMARK_NAMES order
MARKER_COLORS = ((255, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 255))
# markers=True mutes every other pixel to within this of its own grey, so that no lip, clothes or
# background colour can pass for a marker ("channel > 150 while the others are < 90").
_MUTED_CHROMA = 20


@dataclass(frozen=True, eq=False)  # eq=False: a generated == would compare arrays ambiguously
class Scene:
    name: str  # "000001.jpg" style, under root/img_celeba
    # float32 [5, 2] (x, y) pixel indices, per LANDMARK_NAMES: the integers written to the
    # landmark file (and where the markers are centred); the drawn features are within 0.5 px.
    landmarks: np.ndarray
    angle: float  # degrees the eye line is turned counter-clockwise, as seen, in the scene
    scale: float  # scene pixels per side of the rendered face image (the face's own unit)


def write_celeba_inputs(
    root: Path,
    count: int,
    seed: int = 0,
    *,
    face_side: tuple[float, float] = (160, 320),
    scene_size: tuple[int, int] = (480, 400),
    max_angle: float = 25.0,
    markers: bool = False,
    quality: int = 95,
) -> list[Scene]:
    """root/img_celeba/NNNNNN.jpg scenes and root/list_landmarks_celeba.txt listing them.

    Scene i shows synthetic face (seed, i) and depends on nothing else, so a larger count only
    adds scenes. face_side is the range of the CelebA-HQ crop's side in scene pixels (the recipe's
    2·max(2|eye_to_eye|, 1.8|eye_to_mouth|)), so the default faces are all above MIN_FACE_SIDE;
    scene_size is (width, height); the eye line is turned by up to ±max_angle degrees. The face
    sits anywhere its landmarks stay a twentieth of the crop (plus a marker) inside the scene, so
    for some seeds the face and much of its crop reach past the scene's edge. markers=True draws
    pure-colour discs (see MARKER_COLORS) on the landmarks, for tests that locate them in a crop.
    JPEGs are 4:4:4 so a marker's colour stays centred where it was drawn.
    """
    folder = root / "img_celeba"
    folder.mkdir(parents=True, exist_ok=True)
    scenes = []
    for index in range(count):
        scene, image = _scene(seed, index, face_side, scene_size, max_angle, markers)
        image.save(folder / scene.name, quality=quality, subsampling=0)
        scenes.append(scene)
    header = " ".join(f"{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy")
    rows = [
        scene.name + " " + "".join(f" {int(v):4d}" for v in scene.landmarks.ravel())
        for scene in scenes
    ]
    (root / "list_landmarks_celeba.txt").write_text("\n".join([str(count), header, *rows]) + "\n")
    return scenes


def face_landmarks(seed: int, index: int) -> np.ndarray:
    """float64 [5, 2] eye centres, nose tip and mouth corners of render_face(seed, index, ·),
    in fractions of the rendered image's side (0 its top-left corner, 1 its bottom-right)."""
    p = sample_params(np.random.Generator(np.random.PCG64([seed, index])))
    mouth_v = (0.52 - 0.5 * p.smile) * p.ry  # synthetic._mouth's middle line at its corners
    u = np.array([-p.eye_gap, p.eye_gap, 0.0, -p.mouth_w, p.mouth_w]) * p.rx
    v = np.array([_EYE_V * p.ry, _EYE_V * p.ry, p.nose_len * p.ry, mouth_v, mouth_v])
    cos, sin = math.cos(p.angle), math.sin(p.angle)  # synthetic._Pen's rotation
    return np.stack([p.cx + cos * u - sin * v, p.cy + sin * u + cos * v], axis=1)


def _scene(
    seed: int,
    index: int,
    face_side: tuple[float, float],
    scene_size: tuple[int, int],
    max_angle: float,
    markers: bool,
) -> tuple[Scene, Image.Image]:
    rng = np.random.default_rng([seed, index])
    width, height = scene_size
    points = face_landmarks(seed, index) - 0.5  # around the face image's centre
    side = rng.uniform(*face_side)  # the CelebA-HQ crop's, in scene pixels
    scale = side / crop_geometry(points).side
    eye_line = points[1] - points[0]
    angle = rng.uniform(-max_angle, max_angle)
    turn = math.radians(angle) + math.atan2(eye_line[1], eye_line[0])  # undoes the face's own roll
    cos, sin = math.cos(turn), math.sin(turn)
    # Counter-clockwise on screen with y down; offsets of the landmarks' pixel indices from the
    # face image's centre (continuous coordinate minus half a pixel).
    offsets = scale * points @ np.array([[cos, -sin], [sin, cos]]) - 0.5
    radius = max(2, round(side / 100))  # marker, in scene pixels
    # Landmarks stay inside the scene by the marker and a twentieth of the crop (celeba's rim
    # where the photo starts to blur), so the mirror image of a marker in the crop's padding is
    # out of focus and apart from it.
    keep = radius + 2 + math.ceil(side / 20)
    low = keep - offsets.min(axis=0)
    high = np.array([width, height]) - 1 - keep - offsets.max(axis=0)
    if (low > high).any():
        raise ValueError(f"faces up to {face_side[1]} px do not fit a {width}x{height} scene")
    centre = rng.uniform(low, high)  # where the face image's centre lands
    landmarks = np.rint(centre + offsets).astype(np.float32)

    image = _background(rng, width, height)
    resolution = min(1024, 1 << max(2, math.ceil(math.log2(scale))))  # render at >= scene size
    face = render_face(seed, index, resolution)
    # Scene (continuous) -> face image: the inverse of scale, turn and move, for PIL's AFFINE.
    a, b = resolution / scale * cos, -resolution / scale * sin
    d, e = resolution / scale * sin, resolution / scale * cos
    inverse = (a, b, resolution / 2 - a * centre[0] - b * centre[1])
    inverse += (d, e, resolution / 2 - d * centre[0] - e * centre[1])
    mask = Image.new("L", face.size)
    rim = 0.46 * resolution  # a soft disc over the head: the face image's corners do not show
    ImageDraw.Draw(mask).ellipse(
        [resolution / 2 - rim, resolution / 2 - rim, resolution / 2 + rim, resolution / 2 + rim],
        fill=255,
    )
    mask = mask.filter(ImageFilter.GaussianBlur(0.03 * resolution))
    placed = [
        layer.transform(scene_size, Image.Transform.AFFINE, inverse, Image.Resampling.BICUBIC)
        for layer in (face, mask)
    ]
    image = Image.composite(placed[0], image, placed[1])
    if markers:
        image = _muted(image)
        draw = ImageDraw.Draw(image)
        for (x, y), color in zip(landmarks.astype(int).tolist(), MARKER_COLORS, strict=True):
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
    scene = Scene(f"{index + 1:06d}.jpg", landmarks, angle, scale)
    return scene, image


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Blotches of muted colour under a fine grain: a photo's background, compressible as one."""
    coarse = rng.uniform(60, 200, (height // 40 + 2, width // 40 + 2, 3)).astype(np.uint8)
    colour = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    grain = Image.fromarray(rng.uniform(0, 255, (height // 3 + 1, width // 3 + 1)).astype(np.uint8))
    grain = np.asarray(grain.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    pixels = colour + 0.15 * (grain[..., None] - 128)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _muted(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32)
    grey = pixels.mean(axis=2, keepdims=True)
    pixels = grey + np.clip(pixels - grey, -_MUTED_CHROMA, _MUTED_CHROMA)
    return Image.fromarray(np.rint(pixels).astype(np.uint8))
