"""Speech recognition with pocketsphinx (its PyPI package ships the en-US acoustic model,
language model and dictionary, so nothing downloads).

Input: 16 kHz mono 16-bit PCM, as a WAV file (``audio``/``audio_base64``) or as an iterable of
raw PCM frames (``frames``: a WebSocket session). pocketsphinx's voice-activity endpointer cuts
the audio into utterances: while one is spoken, ``partial`` hypotheses stream out (at most one
per ``partial_interval`` seconds of audio, only when they change); when it ends, a ``final``.
The last event is a ``result`` with the whole transcript and the audio's duration.
"""

from __future__ import annotations

import base64
import contextlib
import queue
from collections.abc import Iterable, Iterator
from typing import Any

from inference.engines import MediaInputError
from inference.engines.audio import SAMPLE_RATE, SAMPLE_WIDTH, read_wav
from inference.handlers import load_engine

# Decoders are not thread-safe and take ~0.3 s to build: a worker keeps a few and lends one to
# each stream (more are built when more streams run at once).
MAX_IDLE_DECODERS = 4


class PocketsphinxTranscriber:
    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        self.ps = load_engine("pocketsphinx", "requirements-models-extra.txt")
        self.partial_interval = float(options.get("partial_interval", 0.5))
        self.vad_window = float(options.get("vad_window", 0.3))
        self.max_seconds = float(options.get("max_seconds", 600))
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()

    def _decoder(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self.ps.Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def _give_back(self, decoder: Any) -> None:
        if self._idle.qsize() < MAX_IDLE_DECODERS:
            self._idle.put(decoder)

    def warmup(self) -> None:
        self._give_back(self._decoder())

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for item in batch:
            result: dict[str, Any] = {}
            for event in self.stream(item):
                if event.get("event") == "result":
                    result = {k: v for k, v in event.items() if k != "event"}
            out.append(result)
        return out

    def stream(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        frames: Iterable[bytes]
        if "frames" in item:
            frames = item["frames"]
        else:
            blob = item.get("audio")
            if blob is None:
                blob = base64.b64decode(item.get("audio_base64") or "", validate=False)
            pcm = read_wav(blob).data
            frames = (pcm[i : i + 3200] for i in range(0, len(pcm), 3200))
        decoder = self._decoder()
        try:
            yield from self._transcribe(decoder, frames)
        finally:
            # A stream left mid-utterance (cancelled) must leave the decoder clean; with no
            # utterance open end_utt raises, which is fine.
            with contextlib.suppress(RuntimeError):
                decoder.end_utt()
            self._give_back(decoder)

    def _transcribe(self, decoder: Any, frames: Iterable[bytes]) -> Iterator[dict[str, Any]]:
        endpointer = self.ps.Endpointer(window=self.vad_window, sample_rate=SAMPLE_RATE)
        size = endpointer.frame_bytes
        pending = b""
        total = 0
        finals: list[str] = []
        state: dict[str, Any] = {"open": False, "start": 0.0, "last": "", "since": 0.0}

        def feed(speech: bytes, *, closing: bool) -> Iterator[dict[str, Any]]:
            if not state["open"]:
                decoder.start_utt()
                state.update(open=True, start=round(endpointer.speech_start, 2), last="")
                state["since"] = 0.0
            decoder.process_raw(speech, False, False)
            state["since"] += len(speech) / (SAMPLE_WIDTH * SAMPLE_RATE)
            if closing or not endpointer.in_speech:
                decoder.end_utt()
                state["open"] = False
                hyp = decoder.hyp()
                text = hyp.hypstr if hyp is not None else ""
                if text:
                    finals.append(text)
                    end = endpointer.speech_end if not closing else total / (2 * SAMPLE_RATE)
                    yield {
                        "type": "final",
                        "text": text,
                        "start": state["start"],
                        "end": round(end, 2),
                    }
            elif state["since"] >= self.partial_interval:
                state["since"] = 0.0
                hyp = decoder.hyp()
                text = hyp.hypstr if hyp is not None else ""
                if text and text != state["last"]:
                    state["last"] = text
                    yield {"type": "partial", "text": text, "start": state["start"]}

        for frame in frames:
            if len(frame) % SAMPLE_WIDTH:
                raise MediaInputError(
                    "bad_audio_frame", "PCM frames must hold whole 16-bit samples (even length)."
                )
            total += len(frame)
            if total > self.max_seconds * SAMPLE_RATE * SAMPLE_WIDTH:
                raise MediaInputError(
                    "audio_too_long",
                    f"Audio is longer than the {self.max_seconds:g} s limit.",
                    status=413,
                )
            pending += frame
            while len(pending) >= size:
                chunk, pending = pending[:size], pending[size:]
                speech = endpointer.process(chunk)
                if speech is not None:
                    yield from feed(speech, closing=False)
        if endpointer.in_speech:
            speech = endpointer.end_stream(pending)
            if speech is not None:
                yield from feed(speech, closing=True)
        elif state["open"]:
            yield from feed(b"", closing=True)
        yield {
            "event": "result",
            "text": " ".join(finals),
            "duration": round(total / (SAMPLE_WIDTH * SAMPLE_RATE), 3),
        }
