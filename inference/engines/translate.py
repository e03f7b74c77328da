"""Rule-based translation with Apertium (Debian packages ``apertium`` and a language pair such
as ``apertium-eng-spa``), driven as a subprocess.

Each stream starts the pair's pipeline once, in null-flush mode: a sentence is written followed
by a NUL byte, and the pipeline answers that sentence followed by a NUL, so sentences stream out
one by one without paying the pipeline's start-up (about a second here) for each; a worker keeps
a started pipeline or two idle for the next stream. Unknown words are passed through unmarked.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from inference.engines import MediaInputError
from inference.engines.text import sentences
from inference.runtimes.base import RuntimeUnavailable

INSTALL = "apt-get install apertium apertium-eng-spa"
MAX_IDLE_PIPELINES = 2
# Characters with a meaning in Apertium's stream format; plain text escapes them.
_SPECIAL = re.compile(r"([\\\[\]^$@/<>{}*#|])")
_ESCAPED = re.compile(r"\\(.)")


def mode_file(options: dict[str, Any]) -> Path | None:
    """The pair's mode file (``<prefix>/share/apertium/modes/<mode>.mode``)."""
    binary = shutil.which("apertium")
    if binary is None:
        return None
    modes = Path(
        options.get("modes_dir") or Path(binary).resolve().parent.parent / "share/apertium/modes"
    )
    found = modes / f"{options.get('mode', 'eng-spa')}.mode"
    return found if found.is_file() else None


def probe(options: dict[str, Any]) -> str | None:
    """Why Apertium cannot serve here (the web tier's cheap check), or None."""
    if shutil.which("apertium") is None or shutil.which("apertium-wblank-mode") is None:
        return f"unavailable: apertium is not installed ({INSTALL})"
    if mode_file(options) is None:
        return (
            f"unavailable: the Apertium pair {options.get('mode', 'eng-spa')} is not installed "
            f"({INSTALL})"
        )
    return None


class ApertiumTranslator:
    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        reason = probe(options)
        if reason:
            raise RuntimeUnavailable(reason)
        mode = mode_file(options)
        self.bash = shutil.which("bash") or "/bin/bash"
        # The pipeline comes from the installed pair's mode file, never from a request.
        self.pipeline = subprocess.run(  # noqa: S603
            [shutil.which("apertium-wblank-mode") or "apertium-wblank-mode", "-z", str(mode)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        self.sentence_timeout = float(options.get("sentence_timeout", 30))
        self.max_chars = int(options.get("max_chars", 10_000))
        self._idle: queue.LifoQueue[subprocess.Popen[bytes]] = queue.LifoQueue()

    def _start(self) -> subprocess.Popen[bytes]:
        # $1: the generator's option (-n: unknown words unmarked), $2: the tagger's (none).
        return subprocess.Popen(  # noqa: S603 - the mode file's pipeline; text goes to stdin
            [self.bash, "-c", self.pipeline, "apertium", "-n", ""],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _translate(self, proc: subprocess.Popen[bytes], sentence: str) -> str:
        assert proc.stdin is not None and proc.stdout is not None
        # The trailing newline makes the analyser flush the sentence's last token.
        proc.stdin.write(_SPECIAL.sub(r"\\\1", sentence.replace("\0", " ")).encode() + b"\n\0")
        proc.stdin.flush()
        out = b""
        give_up = time.monotonic() + self.sentence_timeout
        while not out.endswith(b"\0"):
            left = give_up - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
            if not ready:
                raise TimeoutError(f"apertium gave no answer within {self.sentence_timeout:g} s")
            piece = os.read(proc.stdout.fileno(), 65536)
            if not piece:
                raise RuntimeError(f"apertium exited with {proc.wait()}")
            out += piece
        return _ESCAPED.sub(r"\1", out[:-1].decode("utf-8", "replace")).strip()

    def _check(self, item: dict[str, Any]) -> list[str]:
        text = str(item.get("text") or "")
        if not text.strip():
            raise MediaInputError("empty_text", "There is no text to translate.")
        if len(text) > self.max_chars:
            raise MediaInputError(
                "text_too_long", f"Text is {len(text)} characters; the limit is {self.max_chars}."
            )
        return sentences(text)

    def _take(self) -> subprocess.Popen[bytes]:
        while True:
            try:
                proc = self._idle.get_nowait()
            except queue.Empty:
                return self._start()
            if proc.poll() is None:
                return proc
            _stop(proc)

    def _give_back(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None and self._idle.qsize() < MAX_IDLE_PIPELINES:
            self._idle.put(proc)
        else:
            _stop(proc)

    def warmup(self) -> None:
        proc = self._start()
        self._translate(proc, "Hello.")
        self._give_back(proc)

    def close(self) -> None:
        while not self._idle.empty():
            _stop(self._idle.get_nowait())

    def stream(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        parts = self._check(item)
        proc = self._take()
        clean = True  # between sentences: the pipeline can serve the next stream
        try:
            done = []
            for index, sentence in enumerate(parts):
                clean = False
                text = self._translate(proc, sentence)
                clean = True
                done.append(text)
                yield {"index": index, "source": sentence, "text": text}
            yield {"event": "result", "text": " ".join(done), "sentences": len(parts)}
        finally:
            if clean:
                self._give_back(proc)
            else:
                _stop(proc)

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for item in batch:
            result = {}
            for event in self.stream(item):
                if event.get("event") == "result":
                    result = {"text": event["text"]}
            out.append(result)
        return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the pipeline (all of its processes: it runs in a session of its own)."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
