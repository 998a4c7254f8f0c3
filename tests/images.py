"""Test corpora made on the fly: small photo crops in label folders, and odd or hostile files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from latentsweep_lab import photos


def photo_corpus(root: Path, labels=("alpha", "beta", "gamma"), per_label: int = 4, size=(72, 88)) -> list[Path]:
    """``root/<label>/<n>.png``: crops of bundled photos, a different tint per label."""
    paths = []
    sources = [photos.load(name) for name in ("astronaut", "chelsea", "rocket", "coffee")]
    for label_index, label in enumerate(labels):
        (root / label).mkdir(parents=True, exist_ok=True)
        for n in range(per_label):
            image = sources[n % len(sources)]
            top = (20 * n) % (image.shape[0] - size[0])
            left = (30 * label_index + 7 * n) % (image.shape[1] - size[1])
            crop = image[top:top + size[0], left:left + size[1]].astype(np.int16)
            crop[:, :, label_index % 3] += 25
            path = root / label / f"{n:03d}.png"
            Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).save(path)
            paths.append(path)
    return paths


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gradient(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     (x + y) * 255 // max(height + width - 2, 1)], axis=2).astype(np.uint8)


def odd_files() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, expected error_type or None when it must embed)."""
    rgb = Image.fromarray(gradient(48, 64))
    png = encoded(rgb, "PNG")
    jpeg = encoded(rgb, "JPEG", quality=90)
    sixteen = Image.fromarray(gradient(40, 40)[:, :, 0].astype(np.uint16) * 257)
    palette = rgb.convert("RGBA")
    palette.putalpha(128)
    palette = palette.convert("P")
    palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    bomb = bytearray(encoded(Image.new("L", (64, 64)), "PNG"))
    bomb[16:24] = struct.pack(">II", 100_000, 100_000)  # IHDR claims 10^10 pixels
    bomb[29:33] = struct.pack(">I", zlib.crc32(bytes(bomb[12:29])))  # with a valid chunk CRC
    huge = bytearray(encoded(Image.new("RGB", (64, 64)), "PNG"))
    huge[16:24] = struct.pack(">II", 6000, 3000)  # 18 Mpx: under Pillow's bomb guard, over --max-pixels 10M
    huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))
    return {
        "ok.png": (png, None),
        "ok.jpg": (jpeg, None),
        "ok.webp": (encoded(rgb, "WEBP"), None),
        "ok.tiff": (encoded(rgb, "TIFF"), None),
        "grey.png": (encoded(rgb.convert("L"), "PNG"), None),
        "sixteen.png": (encoded(sixteen, "PNG"), None),
        "cmyk.jpg": (encoded(rgb.convert("CMYK"), "JPEG"), None),
        "palette_alpha.png": (encoded(palette, "PNG", transparency=0), None),
        "rgba.png": (encoded(rgb.convert("RGBA"), "PNG"), None),
        "rotated.jpg": (encoded(rgb, "JPEG", exif=exif.tobytes()), None),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "zero.png": (b"", "not_image"),
        "text.png": (b"this is not an image\n", "not_image"),
        "bomb.png": (bytes(bomb), "too_large"),
        "huge.png": (bytes(huge), "too_large"),
        "tiny.png": (encoded(Image.new("RGB", (1, 1)), "PNG"), "too_small"),
        "line.png": (encoded(Image.new("RGB", (1, 300)), "PNG"), "too_small"),
    }
