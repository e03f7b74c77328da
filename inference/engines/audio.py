"""PCM and WAV helpers shared by the web tier (validation, no engine needed) and the engines.

Speech recognition takes 16 kHz, mono, 16-bit signed little-endian PCM; a WAV upload must be
exactly that (no resampling on the server: a wrong rate would silently cost accuracy).
"""

from __future__ import annotations

import io
import struct
import wave
from dataclasses import dataclass

from inference.engines import MediaInputError

SAMPLE_RATE = 16_000
SAMPLE_WIDTH = 2  # bytes: 16-bit signed little-endian
CHANNELS = 1
EXPECTED = "16 kHz, mono, 16-bit PCM WAV"
# A stream of unknown length: RIFF and data sizes at their maximum, as sox and ffmpeg write
# to pipes; readers take the data to the end of the stream.
UNKNOWN_SIZE = 0xFFFFFFFF


@dataclass(frozen=True)
class Pcm:
    data: bytes
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.data) / (SAMPLE_WIDTH * self.sample_rate)


def read_wav(blob: bytes, *, rate: int = SAMPLE_RATE) -> Pcm:
    """The PCM of a WAV file in the format speech recognition takes, or MediaInputError naming
    what was expected and what came."""
    try:
        with wave.open(io.BytesIO(blob), "rb") as wav:
            channels, width, got_rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            if wav.getcomptype() != "NONE":
                raise MediaInputError(
                    "unsupported_audio", f"Compressed WAV; expected {EXPECTED}.", status=415
                )
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError, struct.error) as exc:
        raise MediaInputError(
            "unsupported_audio",
            f"Not a readable WAV file ({exc}); expected {EXPECTED}.",
            status=415,
        ) from exc
    if (channels, width, got_rate) != (CHANNELS, SAMPLE_WIDTH, rate):
        raise MediaInputError(
            "unsupported_audio",
            f"Got {got_rate} Hz, {channels} channel(s), {8 * width}-bit; expected {EXPECTED}.",
            status=415,
        )
    if not frames:
        raise MediaInputError("empty_audio", "The WAV file has no audio frames.")
    return Pcm(frames, got_rate)


def wav_header(sample_rate: int, data_bytes: int = UNKNOWN_SIZE) -> bytes:
    """A 44-byte PCM WAV header (mono, 16-bit); ``UNKNOWN_SIZE`` for a stream."""
    riff = UNKNOWN_SIZE if data_bytes == UNKNOWN_SIZE else 36 + data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH",
            16,
            1,
            CHANNELS,
            sample_rate,
            sample_rate * SAMPLE_WIDTH * CHANNELS,
            SAMPLE_WIDTH * CHANNELS,
            8 * SAMPLE_WIDTH,
        )
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def to_wav(pcm: bytes, sample_rate: int) -> bytes:
    return wav_header(sample_rate, len(pcm)) + pcm


def resample(pcm: bytes, source: int, target: int) -> bytes:
    """16-bit mono PCM from ``source`` Hz to ``target`` Hz (polyphase filter, scipy)."""
    if source == target:
        return pcm
    from math import gcd

    import numpy as np
    from scipy.signal import resample_poly

    g = gcd(source, target)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    out = resample_poly(samples, target // g, source // g)
    return bytes(np.clip(np.round(out), -32768, 32767).astype("<i2").tobytes())
