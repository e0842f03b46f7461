"""Raw media decoding without torchvision/torchaudio: WAV via the standard library, images via PIL.

Audio: `.wav` files (8/16/24/32-bit PCM) are read with `wave` + NumPy; any other container (MELD's `.mp4`
clips, `.flac`, `.mp3`) is decoded by the `ffmpeg` binary (Debian package `ffmpeg`) into 16-bit mono PCM.
Video: a folder of frame images, a single image, or a video file decoded by `ffmpeg` into RGB frames.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


class MediaError(RuntimeError):
    """A media file cannot be read (missing, unsupported, or ffmpeg absent)."""


def _ffmpeg() -> str:
    """Path of the ffmpeg binary, or an error saying how to install it."""
    binary = shutil.which("ffmpeg")
    if binary is None:
        raise MediaError("decoding this file needs ffmpeg (Debian: apt-get install ffmpeg)")
    return binary


def _run_ffmpeg(arguments: list[str], path: Path) -> bytes:
    """Run ffmpeg and return its stdout, or raise MediaError with its message."""
    result = subprocess.run([_ffmpeg(), "-nostdin", "-v", "error", *arguments], capture_output=True, check=False)
    if result.returncode != 0:
        raise MediaError(f"ffmpeg could not decode {path}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono waveform with a polyphase filter."""
    if source_rate == target_rate:
        return waveform
    from scipy.signal import resample_poly

    divisor = math.gcd(source_rate, target_rate)
    return resample_poly(waveform, target_rate // divisor, source_rate // divisor).astype(np.float32)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(mono float32 waveform in [-1, 1], sampling rate) of a PCM WAV file."""
    with wave.open(str(path), "rb") as handle:
        channels, width, rate = handle.getnchannels(), handle.getsampwidth(), handle.getframerate()
        raw = handle.readframes(handle.getnframes())
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        bytes_ = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        ints = bytes_[:, 0].astype(np.int32) | (bytes_[:, 1].astype(np.int32) << 8) | (bytes_[:, 2].astype(np.int32) << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints.astype(np.float32) / float(1 << 23)
    elif width == 4:
        samples = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise MediaError(f"{path}: unsupported WAV sample width {width} bytes")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples.astype(np.float32), rate


def load_audio(path: str | Path, sampling_rate: int, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 waveform of an audio (or video) file at `sampling_rate`, cut to `max_seconds`."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"audio file not found: {path}")
    if path.suffix.lower() == ".wav":
        try:
            waveform, rate = _read_wav(path)
        except wave.Error:
            waveform, rate = _decode_audio_ffmpeg(path, sampling_rate), sampling_rate  # e.g. float WAV
        waveform = resample(waveform, rate, sampling_rate)
    else:
        waveform = _decode_audio_ffmpeg(path, sampling_rate)
    if max_seconds is not None:
        waveform = waveform[: int(max_seconds * sampling_rate)]
    return waveform


def _decode_audio_ffmpeg(path: Path, sampling_rate: int) -> np.ndarray:
    """Decode any audio/video container to mono float32 with ffmpeg."""
    raw = _run_ffmpeg(["-i", str(path), "-vn", "-ac", "1", "-ar", str(sampling_rate), "-f", "s16le", "-"], path)
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def _uniform_indices(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over `total` items (all of them when there are fewer)."""
    if total <= count:
        return list(range(total))
    return [int((i + 0.5) * total / count) for i in range(count)]


def load_frames(path: str | Path, count: int, size: int) -> np.ndarray:
    """Up to `count` RGB frames [F, size, size, 3] (uint8) sampled uniformly from a video, frame folder or image."""
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise MediaError(f"frame folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        chosen = [files[i] for i in _uniform_indices(len(files), count)]
        return np.stack([_image_array(Image.open(p), size) for p in chosen])
    if not path.is_file():
        raise MediaError(f"video file not found: {path}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _image_array(Image.open(path), size)[None]
    raw = _run_ffmpeg(
        ["-i", str(path), "-an", "-vf", f"scale={size}:{size}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], path
    )
    frames = np.frombuffer(raw, dtype=np.uint8)
    if frames.size == 0 or frames.size % (size * size * 3):
        raise MediaError(f"ffmpeg returned no whole frames for {path}")
    frames = frames.reshape(-1, size, size, 3)
    return frames[_uniform_indices(len(frames), count)]


def _image_array(image, size: int) -> np.ndarray:
    """An image as RGB uint8 [size, size, 3]."""
    return np.asarray(image.convert("RGB").resize((size, size)), dtype=np.uint8)
