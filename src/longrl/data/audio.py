"""Audio decoding (PyAV), 16 kHz mono resampling, and Whisper log-mel features, for omni models.

A video's sound track (or an audio file) is decoded in one pass and resampled by PyAV's
``AudioResampler`` to 16 kHz mono float32, the rate Qwen2.5-Omni's audio tower was trained at.
:func:`log_mel` computes the features its processor computes: transformers'
``WhisperFeatureExtractor`` with 128 mel bins (Qwen2.5-Omni's ``preprocessor_config.json``), which
pads every clip with silence to ``chunk_length`` seconds and marks the real frames with a mask;
here only the real frames (``ceil(samples / hop)``) are computed, with the same values: each STFT
frame near the end sees the same zeros after the clip, and the floor (``max - 8``) is taken over
the same frames plus silent ones that never raise it.

A file with no audio stream, or one that cannot be decoded, raises :class:`AudioError` naming the
path, which the dataset handles like a bad video (``data.bad_sample``).
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from longrl.data.video import VideoError

SAMPLING_RATE = 16000
NUM_MEL_BINS = 128  # Qwen2.5-Omni's feature_size
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 300  # Qwen2.5-Omni's chunk_length: the processor keeps at most this much audio


class AudioError(VideoError):
    """An audio track that cannot be used; the message names the path, the cause and a fix."""

    kind = "audio"


def decode_audio(path: str | Path, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """The first audio stream of ``path`` (a video or an audio file) as mono float32 [N] at
    ``sampling_rate``, resampled by PyAV (ffmpeg's swresample). Raises AudioError naming the path
    for a missing file, no audio stream, or an undecodable one."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found", "check the path in the dataset row and the video root directory")
    import av

    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(path, "has no audio stream", "use a video with a sound track, or set data.audio=none")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):  # flush what the resampler holds back
                chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as e:
        raise AudioError(path, f"decoding failed ({e})", "the file is corrupt; re-encode or remove it") from e
    waveform = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    if waveform.size == 0:
        raise AudioError(path, "contains no decodable audio", "re-encode the file or remove the row")
    return waveform


_MEL_FILTERS: dict[tuple[int, int, int], torch.Tensor] = {}


def _mel_filters(num_mel_bins: int, n_fft: int, sampling_rate: int) -> torch.Tensor:
    key = (num_mel_bins, n_fft, sampling_rate)
    if key not in _MEL_FILTERS:
        from transformers.audio_utils import mel_filter_bank

        bank = mel_filter_bank(
            num_frequency_bins=1 + n_fft // 2,
            num_mel_filters=num_mel_bins,
            min_frequency=0.0,
            max_frequency=8000.0,
            sampling_rate=sampling_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        _MEL_FILTERS[key] = torch.from_numpy(bank).float()  # [freq, mel]
    return _MEL_FILTERS[key]


def num_feature_frames(num_samples: int, hop_length: int = HOP_LENGTH) -> int:
    """Log-mel frames of a clip of ``num_samples`` (the processor's ``feature_attention_mask`` sum)."""
    return math.ceil(num_samples / hop_length)


def log_mel(
    waveform: np.ndarray | torch.Tensor,
    *,
    num_mel_bins: int = NUM_MEL_BINS,
    sampling_rate: int = SAMPLING_RATE,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    chunk_seconds: int = CHUNK_SECONDS,
) -> torch.Tensor:
    """Whisper log-mel features float32 [num_mel_bins, ceil(N / hop)] of a mono waveform [N], equal
    to ``WhisperFeatureExtractor(feature_size=num_mel_bins)(w, padding="max_length")``'s frames
    under its attention mask (what Qwen2.5-Omni's processor feeds the audio tower). Audio past
    ``chunk_seconds`` is cut, as the processor cuts it."""
    x = torch.as_tensor(np.asarray(waveform, dtype=np.float32)).reshape(-1)[: chunk_seconds * sampling_rate]
    if x.numel() == 0:
        raise ValueError("an empty waveform has no features")
    frames = num_feature_frames(x.numel(), hop_length)
    # n_fft zeros after the clip: every frame that overlaps it sees the same silence as in the
    # reference's padding, and the centred STFT's reflection at the end reflects only zeros
    padded = torch.nn.functional.pad(x, (0, n_fft))
    window = torch.hann_window(n_fft)
    power = torch.stft(padded, n_fft, hop_length, window=window, return_complex=True).abs() ** 2
    log_spec = (_mel_filters(num_mel_bins, n_fft, sampling_rate).T @ power.contiguous()).clamp(min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0)[:, :frames].contiguous()


def audio_features(path: str | Path, **kwargs) -> torch.Tensor:
    """Log-mel features [128, frames] of ``path``'s audio (:func:`decode_audio` then :func:`log_mel`)."""
    return log_mel(decode_audio(path), **kwargs)


def tone(freq: float, seconds: float, sampling_rate: int = SAMPLING_RATE, amplitude: float = 0.5) -> np.ndarray:
    """A sine tone, float32 [seconds * sampling_rate]."""
    t = np.arange(round(seconds * sampling_rate)) / sampling_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_video_with_audio(
    path: str | Path,
    frames: np.ndarray | None,
    fps: float,
    audio: np.ndarray,
    sampling_rate: int = SAMPLING_RATE,
) -> None:
    """Write uint8 RGB frames [T, H, W, 3] (even sides; None: audio only) and a mono float32
    waveform as one file: H.264 (or MPEG-4 part 2) + AAC in .mp4/.mkv, PCM in .wav."""
    import av

    path = Path(path)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    with av.open(str(path), mode="w") as container:
        vstream = None
        if frames is not None:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            vstream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            vstream.width, vstream.height = frames.shape[2], frames.shape[1]
            vstream.pix_fmt = "yuv420p"
        wav = path.suffix.lower() == ".wav"
        astream = add_audio_stream(container, "pcm_s16le" if wav else "aac", sampling_rate)
        if vstream is not None:
            for rgb in frames:  # type: ignore[union-attr]
                container.mux(vstream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            container.mux(vstream.encode(None))
        encode_audio(container, astream, audio, sampling_rate)


def add_audio_stream(container, codec: str, sampling_rate: int = SAMPLING_RATE):
    """A mono audio stream on an output ``container`` (add every stream before the first mux):
    ``"aac"`` for mp4/mkv, ``"pcm_s16le"`` for wav."""
    stream = container.add_stream(codec, rate=sampling_rate)
    stream.layout = "mono"
    if codec == "aac":
        stream.format = "fltp"
    return stream


def encode_audio(container, stream, audio: np.ndarray, sampling_rate: int = SAMPLING_RATE) -> None:
    """Encode and mux a whole mono float32 waveform into ``stream`` (from :func:`add_audio_stream`)."""
    import av

    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    pcm = stream.codec_context.name.startswith("pcm")
    samples = (np.clip(audio, -1, 1) * 32767).astype(np.int16) if pcm else audio
    frame = av.AudioFrame.from_ndarray(samples[None], format="s16" if pcm else "fltp", layout="mono")
    frame.sample_rate = sampling_rate
    frame.pts = 0
    container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
