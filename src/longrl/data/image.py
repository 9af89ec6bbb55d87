"""Image decoding for image rows and the server: PNG, JPEG, WebP and BMP through PyAV (ffmpeg's
decoders, the library that already reads the videos), to uint8 RGB [H, W, 3].

The result goes to :func:`longrl.data.vision_preprocess.preprocess_image`, which mirrors
``Qwen2VLImageProcessor`` on those pixels. (A JPEG's pixels can differ from PIL's decode by a
gray level where the two libraries upsample chroma differently; PNG, WebP lossless and BMP decode
to the same values.)"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from longrl.data.video import ImageError


def decode_image(source: str | Path | bytes, name: str = "") -> np.ndarray:
    """The first frame of an image file (or its bytes) as uint8 RGB [H, W, 3]; alpha is dropped.
    Raises ImageError naming ``name`` (default: the path) for a missing or undecodable file."""
    import av

    where = name or ("<bytes>" if isinstance(source, bytes) else str(source))
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ImageError(where, "does not exist", "check the row's image path and data.media_root")
    try:
        with av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as container:
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, StopIteration, IndexError) as err:
        cause = f"cannot be decoded as an image ({type(err).__name__}: {err})".replace(" ()", "")
        raise ImageError(where, cause, "use PNG, JPEG, WebP or BMP; re-save or remove the file") from None


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write uint8 RGB [H, W, 3] as a PNG (lossless: :func:`decode_image` returns the same array)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="image2", options={"update": "1"}) as container:
        stream = container.add_stream("png", rate=1)
        stream.height, stream.width = image.shape[:2]
        stream.pix_fmt = "rgb24"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image, dtype=np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
