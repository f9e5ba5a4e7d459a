"""Procedural cartoon faces: the embedded default dataset, so a first run needs no download.

A face is a pure function of (seed, index): its parameters come from a PCG64 stream keyed by both,
and every length is a fraction of the image side, so rendering at another size gives the same face
with more or less detail. Shapes are drawn with PIL on a supersampled canvas and box-reduced,
which is the cheapest antialiasing that keeps the generator well above 50 images/s at 256x256.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

GENERATOR_VERSION = 1  # bump when rendering changes: it is part of the dataset's source digest

HAIR_STYLES = ("bald", "short", "side_part", "fringe", "long", "bob", "curly")
# A path through realistic skin tones, light to dark; a face samples a point along it.
_SKIN = np.array(
    [(255, 224, 200), (241, 194, 160), (214, 160, 120), (176, 120, 84), (128, 84, 58), (86, 56, 40)]
)
_HAIR = ((24, 20, 20), (70, 45, 30), (120, 80, 48), (214, 180, 118), (160, 66, 32), (168, 166, 166))
_IRIS = ((96, 58, 30), (52, 34, 22), (70, 120, 170), (80, 128, 80), (128, 108, 60), (118, 130, 140))
_EYE_V = -0.08  # eye line, in face half-heights from the centre (negative is up)
_GRID = 64  # smooth fields (background, lighting) are computed this coarse, then upsampled

Color = tuple[int, int, int]


@dataclass(frozen=True)
class FaceParams:
    cx: float  # face centre, in fractions of the image side
    cy: float
    angle: float  # head roll, radians
    rx: float  # face half-width
    ry: float  # face half-height
    jaw: float  # how much the lower half narrows towards the chin
    skin: Color
    hair: Color
    hair_style: str
    hair_volume: float
    hair_length: float  # in face half-heights below the face centre (long styles)
    hairline: float  # top of the forehead, in face half-heights above the centre
    part: float  # where a side part sits, in face half-widths
    iris: Color
    lips: Color
    clothes: Color
    bg: tuple[Color, Color]
    bg_angle: float  # direction of the background gradient
    eye_gap: float  # eye centre distance from the midline, in face half-widths
    eye_w: float  # eye half-width, in face half-widths
    eye_open: float  # eye half-height / eye half-width
    gaze: float
    brow_thick: float
    brow_tilt: float
    brow_arch: float
    nose_w: float
    nose_len: float
    mouth_w: float
    smile: float
    mouth_open: float
    lip_thick: float
    glasses: int  # 0: none; otherwise the superellipse exponent of the frames (2 round, 4 square)
    lens_alpha: int
    frame: Color
    ears: bool
    light_angle: float
    light: float  # depth of the shading on the side away from the light
    texture_seed: int  # hair strands are drawn from their own stream so draw() stays pure


def sample_params(rng: np.random.Generator) -> FaceParams:
    def jitter(color, amount: float) -> Color:
        return _c(np.asarray(color) + rng.normal(0, amount, 3))

    u = rng.uniform(0, len(_SKIN) - 1.001)
    skin = _SKIN[int(u)] + (u % 1) * (_SKIN[int(u) + 1] - _SKIN[int(u)])
    rx = rng.uniform(0.2, 0.255)
    ry = rx * rng.uniform(1.18, 1.42)
    bg0 = rng.uniform(30, 235, 3)
    gradient = rng.integers(3)  # solid, vertical or diagonal
    bg1 = bg0 if gradient == 0 else rng.uniform(30, 235, 3)
    return FaceParams(
        cx=0.5 + rng.normal(0, 0.015),
        cy=0.47 - _EYE_V * ry + rng.normal(0, 0.012),  # keeps the eyes near the same height
        angle=math.radians(rng.uniform(-6, 6)),
        rx=rx,
        ry=ry,
        jaw=rng.uniform(0.1, 0.35),
        skin=jitter(skin, 5),
        hair=jitter(_HAIR[rng.choice(6, p=[0.28, 0.22, 0.16, 0.14, 0.08, 0.12])], 10),
        hair_style=HAIR_STYLES[rng.choice(7, p=[0.08, 0.2, 0.14, 0.14, 0.2, 0.12, 0.12])],
        hair_volume=rng.uniform(0, 1),
        hair_length=rng.uniform(0.9, 1.9),
        hairline=rng.uniform(0.68, 0.9),
        part=rng.choice([-1, 1]) * rng.uniform(0.2, 0.55),
        iris=jitter(_IRIS[rng.integers(6)], 8),
        lips=jitter((190, 80, 90) if rng.random() < 0.2 else 0.6 * skin + (70, 12, 18), 8),
        clothes=_c(rng.uniform(20, 235, 3)),
        bg=(_c(bg0), _c(bg1)),
        bg_angle=math.pi / 2 if gradient < 2 else rng.choice([math.pi / 4, 3 * math.pi / 4]),
        eye_gap=rng.uniform(0.36, 0.46),
        eye_w=rng.uniform(0.17, 0.23),
        eye_open=rng.uniform(0.36, 0.56),
        gaze=rng.normal(0, 0.12),
        brow_thick=rng.uniform(0.025, 0.065),
        brow_tilt=rng.uniform(-0.04, 0.05),
        brow_arch=rng.uniform(0.0, 0.05),
        nose_w=rng.uniform(0.15, 0.25),
        nose_len=rng.uniform(0.2, 0.3),
        mouth_w=rng.uniform(0.3, 0.46),
        smile=rng.uniform(-0.03, 0.09),
        mouth_open=rng.uniform(0.05, 0.16) if rng.random() < 0.25 else 0.0,
        lip_thick=rng.uniform(0.025, 0.06),
        glasses=int(rng.choice([0, 2, 4], p=[0.7, 0.15, 0.15])),
        lens_alpha=int(rng.choice([40, 210], p=[0.8, 0.2])),
        frame=jitter((30, 30, 30) if rng.random() < 0.6 else (150, 110, 50), 20),
        ears=bool(rng.random() < 0.7),
        light_angle=rng.uniform(0, 2 * math.pi),
        light=rng.uniform(0.1, 0.35),
        texture_seed=int(rng.integers(2**63)),
    )


def render_face(seed: int, index: int, size: int) -> Image.Image:
    """Face `index` of dataset `seed` as an RGB size x size image (size: 4, 8, ..., 1024)."""
    if size < 4 or size > 1024 or size & (size - 1):
        raise ValueError(f"size must be a power of two in 4..1024, got {size}")
    return draw(sample_params(np.random.Generator(np.random.PCG64([seed, index]))), size)


def draw(p: FaceParams, size: int) -> Image.Image:
    # Small sizes still get a 256 canvas: features thinner than a pixel there would vanish
    # instead of averaging into the right colour, and the face would change with size.
    scale = max(2 * size, 256)
    background, shade = (f.resize((size, size), Image.BILINEAR) for f in _fields(p))
    # Blown up in flat blocks that the final reduce averages back to exactly these pixels.
    img = background.resize((scale, scale), Image.NEAREST)
    silhouette = Image.new("L", (scale, scale))
    pen = _Pen(img, silhouette, p, scale)
    strands = np.random.default_rng(p.texture_seed)
    _body(pen, p)
    _hair(pen, p, strands, front=False)
    _head(pen, p)
    _hair(pen, p, strands, front=True)
    _glasses(pen, p)
    # Lighting is smooth, so it is applied after the reduce, where it costs a fraction.
    img, silhouette = img.reduce(scale // size), silhouette.reduce(scale // size)
    return Image.composite(ImageChops.multiply(img, shade.convert("RGB")), img, silhouette)


def _fields(p: FaceParams) -> tuple[Image.Image, Image.Image]:
    """Background gradient and the head's lighting, both smooth, on a coarse fixed grid."""
    g = (np.arange(_GRID) + 0.5) / _GRID
    x, y = np.meshgrid(g - 0.5, g - 0.5)
    ca, sa = math.cos(p.bg_angle), math.sin(p.bg_angle)
    t = (ca * x + sa * y) / (abs(ca) + abs(sa)) + 0.5
    bg0, bg1 = np.array(p.bg, dtype=float)
    background = bg0 + t[..., None] * (bg1 - bg0)
    x, y = x + 0.5 - p.cx, y + 0.5 - p.cy
    c, s = math.cos(p.angle), math.sin(p.angle)
    u, v = (c * x + s * y) / p.rx, (c * y - s * x) / p.ry
    toward = np.clip(u * math.cos(p.light_angle) + v * math.sin(p.light_angle), -1.5, 1.5)
    # Darker away from the light, and towards the rim so the head reads as round.
    shade = 1 - p.light * (0.5 - toward / 3) - 0.2 * np.clip(u * u + v * v - 0.55, 0, 1)
    return (
        Image.fromarray(background.astype(np.uint8)),
        Image.fromarray((255 * shade).astype(np.uint8)),
    )


class _Pen:
    """Draws in face coordinates: image-side units around the face centre, v pointing down."""

    def __init__(self, img: Image.Image, silhouette: Image.Image, p: FaceParams, scale: int):
        self.img, self.blend = ImageDraw.Draw(img), ImageDraw.Draw(img, "RGBA")
        self.silhouette = ImageDraw.Draw(silhouette)
        c, s = math.cos(p.angle), math.sin(p.angle)
        self.matrix = scale * np.array([[c, s], [-s, c]])
        self.origin = scale * np.array([p.cx, p.cy])
        self.scale = scale

    def xy(self, u, v) -> np.ndarray:
        return np.stack(np.broadcast_arrays(u, v), -1) @ self.matrix + self.origin

    def poly(self, u, v, fill, solid: bool = False, alpha: int = 255) -> None:
        xy = self.xy(u, v).ravel().tolist()
        if alpha == 255:
            self.img.polygon(xy, fill=fill)
        else:  # only tinted lenses: blending is slower, so opaque shapes skip it
            self.blend.polygon(xy, fill=(*fill, alpha))
        if solid:  # part of the lit silhouette rather than the background
            self.silhouette.polygon(xy, fill=255)

    def band(self, u, top, bottom, fill, solid: bool = False) -> None:
        """The region between two curves over the same u."""
        self.poly(np.r_[u, u[::-1]], np.r_[top, bottom[::-1]], fill, solid)

    def line(self, u, v, fill, width: float) -> None:
        self.lines([u], [v], [fill], width)

    def lines(self, u, v, fills, width: float) -> None:
        """One polyline per row of u and v."""
        px = max(1, round(width * self.scale))
        for xy, fill in zip(self.xy(u, v).reshape(len(fills), -1).tolist(), fills, strict=True):
            self.img.line(xy, fill=fill, width=px)

    def ellipse(self, u, v, ru, rv, fill, solid: bool = False, alpha: int = 255) -> None:
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        self.poly(u + ru * np.cos(t), v + rv * np.sin(t), fill, solid, alpha)


def _c(rgb) -> Color:
    r, g, b = np.clip(np.asarray(rgb, dtype=float), 0, 255).astype(int)
    return int(r), int(g), int(b)


def _mix(a: Color, b: Color, t: float) -> Color:
    return _c((1 - t) * np.asarray(a) + t * np.asarray(b))


def _body(pen: _Pen, p: FaceParams) -> None:
    rx, ry = p.rx, p.ry
    pen.ellipse(0, 2.5 * ry, 2.4 * rx, 1.25 * ry, p.clothes, solid=True)
    neck = _mix(p.skin, (0, 0, 0), 0.2)  # in the chin's shadow
    nu = np.array([-0.38, 0.38, 0.45, 0.5, 0, -0.5, -0.45])  # widening, ending in a V-neck
    pen.poly(nu * rx, np.array([0.3, 0.3, 1.2, 1.3, 1.55, 1.3, 1.2]) * ry, neck, solid=True)


def _hair_bands(p: FaceParams, front: bool):
    """Hair regions as (u, top(u), bottom(u)): strands drawn between the curves stay inside."""
    rx, ry, style = p.rx, p.ry, p.hair_style
    if style == "bald":
        return []
    grow = 1.35 if style == "curly" else 1.0
    rxh, ryh, cyh = rx * (1.06 + 0.1 * p.hair_volume) * grow, ry * 1.02 * grow, -0.12 * ry
    wide = 1.08 if style in ("long", "bob", "fringe") else 1.0
    u = np.linspace(-rxh * wide, rxh * wide, 65)
    arc = np.sqrt(np.clip(1 - (u / rxh) ** 2, 0, 1))
    top = cyh - ryh * arc
    if style == "curly":
        top -= 0.08 * ryh * np.abs(np.sin(9 * u / rxh + p.part))
    if not front:
        length = {"long": p.hair_length, "fringe": p.hair_length, "bob": 0.4, "curly": 0.3}
        if style in length:  # hangs to a slightly uneven cut
            return [(u, top, length[style] * ry + 0.03 * ry * np.sin(u * 60))]
        return [(u, top, cyh + 0.25 * ryh * arc)]
    if style == "fringe":  # bangs down to the brows, cut in a ragged line
        line = -0.3 * ry + 0.04 * ry * np.abs(np.sin(u * 90)) + 0.2 * ry * (u / rxh) ** 2
    else:
        temples = (np.abs(u - 0.3 * p.part * rx) / rxh) ** 2  # the hairline drops at the sides
        line = (-p.hairline + (p.hairline - 0.1) * temples) * ry
        if style == "side_part":
            line -= 0.2 * ry * np.tanh((u - p.part * rx) / (0.2 * rx))
    return [(u, top, np.clip(line, top, cyh + ryh * arc))]


def _hair(pen: _Pen, p: FaceParams, rng: np.random.Generator, front: bool) -> None:
    bands = _hair_bands(p, front)
    light, dark = _mix(p.hair, (255, 240, 220), 0.25), _mix(p.hair, (0, 0, 0), 0.35)
    parting = p.part * p.rx if p.hair_style == "side_part" else 0.0
    curl = 0.012 if p.hair_style == "curly" else 0.002
    for u, top, bottom in bands:
        pen.band(u, top, bottom, p.hair, solid=not front)
        n, t = 90 if front else 110, np.linspace(0.02, 0.98, 12)
        u0, phase = rng.uniform(u[0], u[-1], (n, 1)), rng.uniform(0, 2 * np.pi, (n, 1))
        # Strands flow away from the parting and wave a little (a lot when curly).
        su = np.clip(u0 + 0.4 * (u0 - parting) * t + curl * np.sin(14 * t + phase), u[0], u[-1])
        lo, hi = np.interp(su, u, top), np.interp(su, u, bottom)
        fills = [light if k else dark for k in rng.random(n) < 0.4]
        pen.lines(su, lo + t * (hi - lo), fills, 0.0025)
        if front and parting:
            v0, v1 = np.interp(parting, u, top), np.interp(parting, u, bottom)
            scalp = _mix(p.skin, p.hair, 0.3)
            pen.line(np.r_[parting, parting], np.r_[v0, v0 + 0.7 * (v1 - v0)], scalp, 0.004)


def _head(pen: _Pen, p: FaceParams) -> None:
    rx, ry, skin = p.rx, p.ry, p.skin
    shadow = _mix(skin, (60, 20, 20), 0.3)
    eye_v = _EYE_V * ry
    if p.ears and p.hair_style not in ("long", "curly"):
        for side in (-1, 1):
            pen.ellipse(side * 0.97 * rx, eye_v + 0.14 * ry, 0.16 * rx, 0.28 * ry, skin, True)
            pen.ellipse(side * 1.0 * rx, eye_v + 0.14 * ry, 0.08 * rx, 0.17 * ry, shadow)
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    narrow = 1 - p.jaw * np.clip(np.sin(t), 0, 1) ** 2
    pen.poly(rx * np.cos(t) * narrow, ry * np.sin(t), skin, solid=True)
    _nose(pen, p, shadow)
    _mouth(pen, p)
    for side in (-1, 1):
        _eye(pen, p, side, side * p.eye_gap * rx, eye_v)


def _nose(pen: _Pen, p: FaceParams, shadow: Color) -> None:
    w, tip = p.nose_w * p.rx, p.nose_len * p.ry
    side = 1 if math.cos(p.light_angle) < 0 else -1  # the ridge casts its shade away from the light
    pen.line(np.array([0.3, 0.6, 0.9]) * side * w, np.array([-0.05, 0.5, 0.9]) * tip, shadow, 0.004)
    pen.ellipse(0, tip + 0.1 * w, 0.9 * w, 0.25 * w, _mix(p.skin, shadow, 0.5))
    pen.ellipse(0, tip, 0.5 * w, 0.35 * w, _mix(p.skin, (255, 255, 255), 0.12))
    for s in (-1, 1):
        pen.ellipse(s * 0.45 * w, tip + 0.2 * w, 0.17 * w, 0.09 * w, _mix(p.skin, (0, 0, 0), 0.55))


def _mouth(pen: _Pen, p: FaceParams) -> None:
    t = np.linspace(-1, 1, 33)
    u, bulge = t * p.mouth_w * p.rx, np.sqrt(1 - t * t)
    mid = 0.52 * p.ry + p.smile * p.ry * (1 - t * t) - 0.5 * p.smile * p.ry
    gap = mid + p.mouth_open * p.ry * bulge
    bow = 1 - 0.35 * np.exp(-((t / 0.15) ** 2))  # the dip in the middle of the upper lip
    upper, lower = mid - 0.8 * p.lip_thick * p.ry * bulge * bow, gap + p.lip_thick * p.ry * bulge
    if p.mouth_open:
        pen.band(u, mid, gap, (70, 20, 25))
        pen.band(u, mid, mid + 0.35 * (gap - mid), (235, 230, 220))  # upper teeth
    pen.band(u, upper, mid, _mix(p.lips, (0, 0, 0), 0.2))
    pen.band(u, gap, lower, p.lips)
    sheen, lip = _mix(p.lips, (255, 255, 255), 0.25), p.lip_thick * p.ry
    pen.ellipse(0, lower[16] - 0.35 * lip, 0.3 * u[-1], 0.2 * lip, sheen)
    pen.line(u, mid, _mix(p.lips, (0, 0, 0), 0.5), 0.003)


def _eye(pen: _Pen, p: FaceParams, side: int, eu: float, ev: float) -> None:
    w = p.eye_w * p.rx
    h = w * p.eye_open
    t = np.linspace(-1, 1, 25)
    u = eu + w * t
    top = ev - h * (1 - t * t) ** 0.7 - 0.08 * h * t * side  # outer corners slightly raised
    bottom = ev + 0.7 * h * (1 - t * t)
    dark, lid = _mix(p.skin, (0, 0, 0), 0.3), (35, 25, 25)
    pen.line(u, top - 0.45 * h * (1 - t * t) ** 0.5, dark, 0.003)  # crease
    pen.band(u, top, bottom, (240, 236, 230))

    def clipped(cu, cv, r, fill):  # a disc seen through the eyelids
        a = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        du = np.clip(cu + r * np.cos(a), u[0], u[-1])
        dv = np.clip(cv + r * np.sin(a), np.interp(du, u, top), np.interp(du, u, bottom))
        pen.poly(du, dv, fill)

    iu, ir = eu + p.gaze * w, 0.5 * w
    clipped(iu, ev + 0.1 * h, ir, p.iris)
    clipped(iu, ev + 0.1 * h, 0.6 * ir, _mix(p.iris, (0, 0, 0), 0.35))
    clipped(iu, ev + 0.1 * h, 0.4 * ir, (15, 12, 12))
    lu, lv = math.cos(p.light_angle), math.sin(p.light_angle)
    clipped(iu + 0.4 * ir * lu, ev + 0.1 * h + 0.4 * ir * lv, 0.16 * ir, (255, 255, 255))
    pen.line(u, top, lid, 0.005)
    pen.line(u, bottom, dark, 0.002)
    for k in np.linspace(0.3, 0.95, 4) * side:  # lashes lean outwards
        j = int(round((k + 1) * 12))
        pen.line(np.r_[u[j], u[j] + 0.2 * h * k], np.r_[top[j], top[j] - 0.3 * h], lid, 0.002)
    brow_v = ev - 1.25 * h - 0.06 * p.ry
    mid = brow_v - p.brow_arch * p.ry * (1 - t * t) - p.brow_tilt * p.ry * t * side
    half = 0.5 * p.brow_thick * p.ry * (1 - 0.5 * (t * side + 1) / 2)  # tapers outwards
    brow = _mix(p.skin if p.hair_style == "bald" else p.hair, (0, 0, 0), 0.45)
    pen.band(eu + 1.15 * w * t, mid - half, mid + half, brow)


def _glasses(pen: _Pen, p: FaceParams) -> None:
    if not p.glasses:
        return
    w, ev = p.eye_w * p.rx, (_EYE_V + 0.02) * p.ry
    a = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    e = 2 / p.glasses
    ru, rv = 1.45 * w, 1.05 * w
    tint = (20, 25, 35) if p.lens_alpha > 128 else (210, 225, 255)
    for side in (-1, 1):
        cu = side * p.eye_gap * p.rx
        fu = cu + ru * np.sign(np.cos(a)) * np.abs(np.cos(a)) ** e
        fv = ev + rv * np.sign(np.sin(a)) * np.abs(np.sin(a)) ** e
        pen.poly(fu, fv, tint, alpha=p.lens_alpha)
        pen.line(np.r_[fu, fu[0]], np.r_[fv, fv[0]], p.frame, 0.006)
        pen.line(np.r_[cu + side * ru, side * p.rx], np.r_[ev, ev - 0.02 * p.ry], p.frame, 0.005)
    inner = p.eye_gap * p.rx - ru
    pen.line(np.r_[-inner, 0, inner], np.r_[ev, ev - 0.3 * rv, ev], p.frame, 0.005)
