"""Reading pictures safely and shaping them for the encoder.

Real photo folders hold truncated JPEGs, CMYK scans, 16-bit PNGs, palette GIFs, phone pictures
stored sideways with an EXIF rotation, and the occasional decompression bomb. `load_image`
turns all of those into an upright RGB picture or raises an `ImageError` naming the file and
the reason. It checks the pixel count from the header, before decoding anything.

The geometric transform (resize, centre crop) produces uint8 tensors; the normalisation (mean,
std) lives inside the encoder, so preprocessing can never disagree with the network. The same
geometry is also written with PIL and NumPy alone (`ImageTransform.to_array`), pixel for pixel
what torchvision does with a PIL picture, for the ONNX runtime that runs without torch.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageError
from ..fileio import FILE_LIMITS, read_bounded

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Our own limit (data.max_image_pixels) is checked first; PIL's global one must not pre-empt it.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 89_478_485
LONG_SIDE_LIMIT = 8   # a resized picture longer than this many times its short side takes the shortcut


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
    return image if image.mode == "RGB" else image.convert("RGB")  # convert() would copy an RGB picture


def _from_array(array, label: str) -> Image.Image:
    """A numpy array (H x W, H x W x 1/3/4; uint8, or floats in 0..1) as a PIL image."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape:
        raise ImageError(label, f"array of shape {tuple(array.shape)} is not a picture (expected H x W or H x W x 3/4)",
                         "format")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise ImageError(label, "array holds NaN or infinite values", "format")
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif array.dtype == np.bool_ or array.dtype.kind not in "ui":
        raise ImageError(label, f"array of {array.dtype} is not a picture (expected uint8, or floats in 0..1)", "format")
    elif array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise ImageError(label, f"array values outside 0..255 ({array.dtype})", "format")
        array = array.astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def _read_source(source, label: str) -> bytes:
    """The bytes of a path, bytes-like object or binary file object, or an ImageError; a file or
    file object is read bounded by FILE_LIMITS['image'] (an endless /dev/zero is refused)."""
    limit = FILE_LIMITS["image"]
    too_large = ImageError(label, f"file too large (over {limit:,} bytes)", "too_large")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read"):
        try:
            try:
                data = source.read(limit + 1)
            except TypeError:   # a file-like object whose read() takes no size
                data = source.read()
        except (OSError, ValueError) as error:
            raise ImageError(label, f"cannot read file object ({error})", "missing") from None
        if isinstance(data, str):
            raise ImageError(label, "file object opened in text mode (open pictures with 'rb')", "format")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageError(label, f"file object returned {type(data).__name__}, not bytes", "format")
        if len(data) > limit:
            raise too_large
        return bytes(data)
    try:
        return read_bounded(source, limit, "a picture", lambda message: too_large)
    except FileNotFoundError:
        raise ImageError(label, "file not found", "missing") from None
    except IsADirectoryError:
        raise ImageError(label, "is a folder, not an image", "format") from None
    except OSError as error:
        raise ImageError(label, f"cannot read file ({error.strerror or error.__class__.__name__})", "missing") from None
    except ValueError as error:  # a NUL byte in the name
        raise ImageError(label, f"not a usable file name ({error})", "missing") from None


# what counts as one picture (anything else that is iterable is a list of pictures)
_ONE_PICTURE = (str, Path, bytes, bytearray, memoryview, Image.Image)


def is_one_picture(source) -> bool:
    """One picture, or a list of them? The one rule for the API's `caption` and `logprob`: paths,
    bytes-like objects, PIL images, arrays, tensors and binary file objects are one picture each;
    other iterables are lists; anything else is one (bad) picture, refused when it is read."""
    if isinstance(source, _ONE_PICTURE) or hasattr(source, "read") or hasattr(source, "__array_interface__"):
        return True
    torch = sys.modules.get("torch")  # a tensor is one picture; torch is not imported to find out
    if torch is not None and isinstance(source, torch.Tensor):
        return True
    try:
        iter(source)
    except TypeError:
        return True
    return False


def picture_name(source, index: int) -> str:
    """How a picture is named in results and messages: its path, a file object's name, or 'image N'."""
    if isinstance(source, (str, Path)):
        return str(source)
    name = getattr(source, "name", None) if hasattr(source, "read") else None
    return name if isinstance(name, str) and name else f"image {index}"


def load_image(source, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None,
               before_decode: Callable[[int], object] | None = None) -> Image.Image:
    """An upright RGB PIL image from a path, bytes, a binary file object, a PIL image or a numpy
    array, or an ImageError. `before_decode(pixels)` is called once the size is known from the
    header and checked, before any pixel is decoded (the service uses it to bound memory)."""
    if isinstance(source, Image.Image):
        label = name or "image"
        image = source
    elif hasattr(source, "__array_interface__") and not isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "array"
        image = _from_array(source, label)
    elif isinstance(source, (str, Path, bytes, bytearray, memoryview)) or hasattr(source, "read"):
        label = name or (str(source) if isinstance(source, (str, Path)) else "upload")
        data = _read_source(source, label)
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
    else:
        raise ImageError(name or "image", f"cannot read a picture from {type(source).__name__} (give a path, bytes, a "
                                          "binary file object, a PIL image or a numpy array)", "format")
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(label, f"image has no pixels ({width}x{height})", "corrupt")
    if width * height > max_pixels:
        raise ImageError(label, f"too many pixels ({width}x{height} = {width * height:,} > limit {max_pixels:,}); "
                                "possible decompression bomb", "too_large")
    if before_decode is not None:
        before_decode(width * height)
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


def release_free_memory() -> None:
    """Hand memory that is free but kept by the C allocator back to the system (glibc's
    malloc_trim; nothing elsewhere). Decoded pictures come and go in many threads' malloc arenas,
    which otherwise keep the resident size at its high-water mark."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


class DecodeBudget:
    """At most `max_pixels` pixels decoded at once in this process, across threads: a picture
    waits until its area fits (one picture over the budget alone still goes through, by itself),
    so many large uploads at once cannot hold gigabytes of decoded pixels. When the last large
    picture is done, free memory goes back to the system."""

    def __init__(self, max_pixels: int, trim_above: int = 4_000_000):
        self.max_pixels, self.trim_above = max_pixels, trim_above
        self.in_use = self.peak = self.waiting = 0
        self._since_trim = 0
        self._free = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int):
        with self._free:
            self.waiting += 1
            try:
                self._free.wait_for(lambda: self.in_use == 0 or self.in_use + pixels <= self.max_pixels)
            finally:
                self.waiting -= 1
            self.in_use += pixels
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._free:
                self.in_use -= pixels
                self._since_trim += pixels
                trim = self.in_use == 0 and self._since_trim >= self.trim_above
                if trim:
                    self._since_trim = 0
                self._free.notify_all()
            if trim:
                release_free_memory()

    def stats(self) -> dict:
        with self._free:
            return {"max_pixels": self.max_pixels, "pixels_in_use": self.in_use, "peak_pixels": self.peak,
                    "waiting": self.waiting}


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

    def _long_shortcut(self, image: Image.Image) -> Image.Image | None:
        """For a picture of extreme aspect ratio (a 1 x 5000 strip), the centre crop resized straight
        from the source region it comes from (PIL's `box`, the same sampling positions): resizing the
        whole strip first would make a 256 x 1,280,000 picture (about 1 GB) to keep 224 x 224 of it."""
        if self.mode == "squash":
            return None
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_long = int(self.resize * long / short)
        if new_long <= LONG_SIDE_LIMIT * self.resize or self.resize < self.crop:
            return None
        new_w, new_h = (self.resize, new_long) if width <= height else (new_long, self.resize)
        top, left = int(round((new_h - self.crop) / 2.0)), int(round((new_w - self.crop) / 2.0))
        sx, sy = width / new_w, height / new_h
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        return image.resize((self.crop, self.crop), _PIL_FILTERS[self.interpolation], box=box)

    def __call__(self, image: Image.Image):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        shortcut = self._long_shortcut(image)
        if shortcut is not None:
            return TF.pil_to_tensor(shortcut)
        interpolation = InterpolationMode(self.interpolation)
        if self.mode == "squash":
            image = TF.resize(image, [self.crop, self.crop], interpolation=interpolation, antialias=True)
        else:
            image = TF.resize(image, [self.resize], interpolation=interpolation, antialias=True)
            image = TF.center_crop(image, [self.crop, self.crop])
        return TF.pil_to_tensor(image)  # uint8 (3, crop, crop)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """The same as calling the transform, with PIL and NumPy only: uint8 (3, crop, crop)."""
        shortcut = self._long_shortcut(image)
        if shortcut is not None:
            return np.ascontiguousarray(np.asarray(shortcut, dtype=np.uint8).transpose(2, 0, 1))
        resample = _PIL_FILTERS[self.interpolation]
        width, height = image.size
        if self.mode == "squash":
            size = (self.crop, self.crop)
        else:  # the shorter side to `resize`, the longer in proportion (rounded down), as torchvision does
            short, long = min(width, height), max(width, height)
            new_short, new_long = self.resize, int(self.resize * long / short)
            size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != image.size:
            image = image.resize(size, resample)
        if self.mode != "squash":
            image = _center_crop(image, self.crop)
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


_PIL_FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "box": Image.BOX,
                "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


def _center_crop(image: Image.Image, side: int) -> Image.Image:
    """torchvision's center_crop of a PIL picture: black padding first where it is smaller."""
    width, height = image.size
    if side > width or side > height:
        left, top = max(0, (side - width) // 2), max(0, (side - height) // 2)
        padded = Image.new(image.mode, (max(width, side), max(height, side)))
        padded.paste(image, (left, top))
        image, (width, height) = padded, padded.size
    top, left = int(round((height - side) / 2.0)), int(round((width - side) / 2.0))
    return image.crop((left, top, left + side, top + side))


def load_tensor(path: str | Path | bytes | Image.Image, transform: ImageTransform,
                max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None):
    return transform(load_image(path, max_pixels, name))
