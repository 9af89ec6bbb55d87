"""Audio for omni models: PyAV decoding and 16 kHz resampling, Whisper log-mel features equal to
transformers' WhisperFeatureExtractor as Qwen2.5-Omni's processor runs it, clear errors by path."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from longrl.data.audio import (
    AudioError,
    decode_audio,
    log_mel,
    num_feature_frames,
    tone,
    write_video_with_audio,
)
from longrl.data.video import VideoError, write_video

pytestmark = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV is not installed")

FEATURE_TOLERANCE = 1e-5  # absolute, on features of magnitude ~1 (measured: exactly equal)


def reference_features(waveform: np.ndarray) -> torch.Tensor:
    """What Qwen2.5-Omni's processor feeds the audio tower: WhisperFeatureExtractor(128 mel bins,
    300 s chunks) padded to max_length, the frames under its attention mask."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, chunk_length=300)
    out = extractor(
        waveform, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt"
    )
    return out["input_features"][0][:, out["attention_mask"][0].bool()]


def peak_frequency(waveform: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(waveform))
    return float(np.argmax(spectrum) * rate / len(waveform))


@pytest.mark.parametrize("suffix", [".mp4", ".wav"])
def test_decode_resamples_to_16k_mono(tmp_path, suffix):
    # written at 44.1 kHz so the decoder really resamples
    rate, seconds, freq = 44100, 1.3, 660.0
    frames = np.full((6, 32, 32, 3), 90, np.uint8) if suffix == ".mp4" else None
    path = tmp_path / f"clip{suffix}"
    write_video_with_audio(path, frames, 4, tone(freq, seconds, rate), sampling_rate=rate)
    waveform = decode_audio(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    expected = seconds * 16000
    # AAC adds encoder priming and pads its last 1024-sample frame (at 44.1 kHz)
    slack = 0 if suffix == ".wav" else 2 * 2048 * 16000 / rate
    assert expected - 2 <= len(waveform) <= expected + slack + 2
    assert abs(peak_frequency(waveform) - freq) < 2.0
    assert 0.3 < np.abs(waveform).max() < 0.7  # amplitude 0.5 survives


@pytest.mark.parametrize("num_samples", [16000, 16001, 20939, 159, 400, 7 * 160])
def test_log_mel_equals_whisper_feature_extractor(num_samples):
    rng = np.random.default_rng(num_samples)
    t = np.arange(num_samples) / 16000
    waveform = (0.3 * np.sin(2 * np.pi * 523 * t) + 0.05 * rng.standard_normal(num_samples)).astype(np.float32)
    waveform[-50:] *= 4.0  # a loud tail: the frames past the clip must not change the floor
    ours = log_mel(waveform)
    ref = reference_features(waveform)
    assert ours.shape == ref.shape == (128, num_feature_frames(num_samples))
    assert (ours - ref).abs().max() <= FEATURE_TOLERANCE


def test_features_of_a_decoded_file_equal_the_reference(tmp_path):
    path = tmp_path / "beeps.mp4"
    audio = np.concatenate([tone(440, 0.4), np.zeros(3000, np.float32), tone(880, 0.55)])
    write_video_with_audio(path, np.full((4, 32, 32, 3), 30, np.uint8), 2, audio)
    waveform = decode_audio(path)
    assert (log_mel(waveform) - reference_features(waveform)).abs().max() <= FEATURE_TOLERANCE


def test_video_without_audio_names_the_path(tmp_path):
    path = tmp_path / "silent.mp4"
    write_video(path, np.full((4, 32, 32, 3), 10, np.uint8), fps=2)
    with pytest.raises(AudioError, match="audio .*silent.mp4: has no audio stream") as err:
        decode_audio(path)
    assert isinstance(err.value, VideoError) and err.value.path == str(path)


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage bytes, not audio" * 64])
def test_broken_file_names_the_path(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="audio .*broken.mp4: "):
        decode_audio(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(AudioError, match="audio .*nope.wav: file not found"):
        decode_audio(tmp_path / "nope.wav")
