"""Reading pictures safely and shaping them for the encoder.

Real photo folders hold truncated JPEGs, CMYK scans, 16-bit PNGs, palette GIFs, phone pictures
stored sideways with an EXIF rotation, and the occasional decompression bomb. `load_image`
turns all of those into an upright RGB picture or raises an `ImageError` naming the file and
the reason. It checks the pixel count from the header, before decoding anything.

The geometric transform (resize, centre crop) produces uint8 tensors; the normalisation (mean,
std) lives inside the encoder, so preprocessing can never disagree with the network.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..errors import ImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own limit (data.max_image_pixels) is checked first; PIL's global one must not pre-empt it.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 89_478_485


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; transparency is composed over white, as a viewer shows it."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> Image.Image:
    """An upright RGB PIL image from a path, bytes or a PIL image, or an ImageError."""
    if isinstance(source, Image.Image):
        label = name or "image"
        image = source
    else:
        label = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "upload")
        try:
            data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
        except FileNotFoundError:
            raise ImageError(label, "file not found", "missing") from None
        except IsADirectoryError:
            raise ImageError(label, "is a folder, not an image", "format") from None
        except OSError as error:
            raise ImageError(label, f"cannot read file ({error.strerror or error.__class__.__name__})", "missing") from None
        if not data:
            raise ImageError(label, "empty file (0 bytes)", "empty")
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageError(label, "not an image (unrecognised format)", "format") from None
        except Image.DecompressionBombError as error:
            raise ImageError(label, f"possible decompression bomb ({error})", "too_large") from None
        except (OSError, ValueError, SyntaxError) as error:
            raise ImageError(label, f"unreadable image header ({error})") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(label, f"image has no pixels ({width}x{height})", "corrupt")
    if width * height > max_pixels:
        raise ImageError(label, f"too many pixels ({width}x{height} = {width * height:,} > limit {max_pixels:,}); "
                                "possible decompression bomb", "too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if getattr(image, "is_animated", False):
                image.seek(0)  # first frame of an animated GIF/PNG/WebP
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except Image.DecompressionBombError as error:
        raise ImageError(label, f"possible decompression bomb ({error})", "too_large") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, MemoryError) as error:
        reason = str(error) or error.__class__.__name__
        if "truncated" in reason.lower():
            reason = "truncated image file"
        raise ImageError(label, f"corrupt or truncated image ({reason})") from None


@dataclass(frozen=True)
class ImageTransform:
    """Geometry for the encoder: 'crop' resizes the shorter side to `resize` and takes the central
    `crop` x `crop` square (torchvision's ImageNet recipe); 'squash' resizes the whole picture to
    `crop` x `crop`, which keeps every object in view (used for the synthetic scenes, where a crop
    would cut shapes off and make their captions wrong)."""

    crop: int
    resize: int
    mode: str = "crop"
    interpolation: str = "bilinear"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        interpolation = InterpolationMode(self.interpolation)
        if self.mode == "squash":
            image = TF.resize(image, [self.crop, self.crop], interpolation=interpolation, antialias=True)
        else:
            image = TF.resize(image, [self.resize], interpolation=interpolation, antialias=True)
            image = TF.center_crop(image, [self.crop, self.crop])
        return TF.pil_to_tensor(image)  # uint8 (3, crop, crop)


def load_tensor(path: str | Path | bytes | Image.Image, transform: ImageTransform,
                max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> torch.Tensor:
    return transform(load_image(path, max_pixels, name))
