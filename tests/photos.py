"""A folder of generated "photos" for trying the own-photos recipe without photos of your own.

Each class is a shape (circle, square, triangle, ...) in a random colour, place and size on a noisy
background; the photos are JPEGs of several sizes (landscape and portrait), and some carry an EXIF
orientation tag with their pixels stored rotated, as phone cameras write them, so a reader that
ignores the tag sees them sideways.

    python tests/photos.py my_photos            # 3 classes x 40 photos
    python tests/photos.py my_photos --per-class 100 --classes 4
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "cross")
SIZES = ((320, 240), (240, 320), (400, 300), (256, 256), (480, 360))
ORIENTATION_TAG = 0x0112  # EXIF Orientation
ROTATED_90_CW = 6  # stored rotated 90 degrees counter-clockwise: a viewer turns it 90 degrees clockwise


def draw_photo(shape: str, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """One upright photo of ``shape``: a noisy background with the shape in a random colour."""
    w, h = size
    base = tuple(rng.randrange(60, 200) for _ in range(3))
    img = Image.effect_noise(size, 40).convert("RGB")
    img = Image.blend(img, Image.new("RGB", size, base), 0.6)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.2, 0.35) * min(w, h)
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    colour = tuple(rng.randrange(0, 256) for _ in range(3))
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        t = r / 3
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=colour)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=colour)
    return img.filter(ImageFilter.GaussianBlur(1))


def save_photo(img: Image.Image, path: Path, *, exif_rotated: bool) -> None:
    """Save as JPEG; with ``exif_rotated`` store the pixels turned 90 degrees counter-clockwise and
    tag Orientation 6, so the photo is upright only for a reader that applies the tag."""
    if not exif_rotated:
        img.save(path, "JPEG", quality=90)
        return
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = ROTATED_90_CW
    img.transpose(Image.Transpose.ROTATE_90).save(path, "JPEG", quality=90, exif=exif.tobytes())


def make_photos(root: Path, *, classes: int = 3, per_class: int = 40, seed: int = 0) -> Path:
    """Write ``classes`` x ``per_class`` photos under ``root/<shape>/``; every fifth is EXIF-rotated."""
    rng = random.Random(seed)
    for shape in SHAPES[:classes]:
        folder = root / f"{shape}s"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = SIZES[i % len(SIZES)]
            save_photo(draw_photo(shape, size, rng), folder / f"IMG_{i:04d}.jpg", exif_rotated=i % 5 == 4)
    return root


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("out", type=Path, help="folder to create (one sub-folder per class)")
    parser.add_argument("--classes", type=int, default=3, choices=range(2, len(SHAPES) + 1))
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    make_photos(args.out, classes=args.classes, per_class=args.per_class, seed=args.seed)
    print(f"wrote {args.classes * args.per_class} photos under {args.out}")


if __name__ == "__main__":
    main()
