"""A new item's image sent as bytes (`image_base64` in POST /v1/items).

The bytes are decoded and checked in memory with PIL (only common raster formats, a pixel ceiling
against decompression bombs), then kept in the server's image store as `<sha256>.<format>`, and that
file's path is what the recommender embeds. The image encoder reads image *paths*, and the live
catalog log records the path so every reload and restart re-embeds the item from the same image: a
temporary file deleted after embedding would leave the log pointing at nothing, and the item would
silently come back without its image after the next reload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from recsys.serving.errors import ApiError

logger = logging.getLogger(__name__)

FIELD = "image_base64"
# What PIL may decode here; never formats that run external programs (EPS) or are rarely images of items.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
MAX_PIXELS = 25_000_000  # 5000 x 5000; the encoder resizes to 256 px anyway
_DATA_URL = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class DecodedImage:
    data: bytes
    format: str  # PIL's name, e.g. "JPEG"
    width: int
    height: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_image", f"{FIELD}: {message}",
                    details=[{"loc": ["body", FIELD], "msg": message, "type": "invalid_image"}])


def _too_large(message: str) -> ApiError:
    return ApiError(413, "image_too_large", f"{FIELD}: {message}",
                    details=[{"loc": ["body", FIELD], "msg": message, "type": "image_too_large"}])


def decode_image(raw: str, max_bytes: int) -> DecodedImage:
    """base64 text -> checked image bytes; 413 over `max_bytes` or MAX_PIXELS, 422 if not a decodable image."""
    from PIL import Image  # lazy: only this endpoint needs it

    if max_bytes <= 0:
        raise _too_large("image uploads are disabled on this server (--max-image-bytes 0)")
    text = _DATA_URL.sub("", raw.strip(), count=1)
    text = "".join(text.split())  # MIME-style line breaks
    if 3 * (len(text) // 4) - 2 > max_bytes:  # decoded size >= this: refuse before decoding
        raise _too_large(f"more than the {max_bytes} bytes allowed (--max-image-bytes)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid(f"not valid base64 ({exc})") from None
    if len(data) > max_bytes:
        raise _too_large(f"decodes to {len(data)} bytes, more than the {max_bytes} allowed (--max-image-bytes)")
    if not data:
        raise _invalid("empty")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise _too_large(f"{width}x{height} pixels, more than the {MAX_PIXELS} allowed")
            image.load()  # decode it all: a truncated or corrupt image fails here, not in the encoder
            fmt = str(image.format)
    except ApiError:
        raise
    except Image.DecompressionBombError as exc:
        raise _too_large(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - whatever PIL raises on garbage is the client's error
        reason = f"not a decodable {'/'.join(FORMATS)} image ({type(exc).__name__}: {exc})"
        raise _invalid(reason[:300]) from None
    return DecodedImage(data, fmt, width, height)


def store_image(image: DecodedImage, directory: Path) -> Path:
    """Keep the image as `directory/<sha256>.<format>` (written atomically, once per distinct image)."""
    directory = Path(directory)
    path = directory / f"{image.sha256}.{image.format.lower()}"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".upload-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(image.data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("stored image %s (%s, %dx%d, %d bytes)", path, image.format, image.width, image.height, len(image.data))
    return path
