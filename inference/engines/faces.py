"""Face detection in video frames with the Haar cascades OpenCV ships
(``opencv-python-headless``: ``cv2.data.haarcascades``; OpenCV 5 dropped them, hence the 4.x pin).

``stream`` decodes a video file frame by frame and yields one ``result`` per analysed frame
(every ``every``-th frame): its index, time, size and the faces found as ``[x, y, w, h]``; with
``preview`` also a ``chunk`` holding the frame as a JPEG with the faces boxed (the MJPEG preview
is made of these); last a ``summary`` (frames, duration), which goes into the ``end`` event.
A file OpenCV cannot open, or one that ends before the frame count its header declares
(truncated), is a :class:`MediaInputError`.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from typing import Any

from inference.engines import MediaInputError
from inference.handlers import load_engine
from inference.runtimes.base import RuntimeUnavailable


class HaarFaces:
    def __init__(self, *, options: dict[str, Any], artifact: bytes | None) -> None:
        self.cv2 = load_engine("cv2", "requirements-models-extra.txt")
        cascade = str(options.get("cascade", "haarcascade_frontalface_default.xml"))
        self.path = self.cv2.data.haarcascades + cascade
        if self.cv2.CascadeClassifier(self.path).empty():
            raise RuntimeUnavailable(f"unavailable: cannot load the cascade {self.path}")
        self.scale = float(options.get("scale_factor", 1.1))
        self.neighbors = int(options.get("min_neighbors", 5))
        self.min_size = int(options.get("min_size", 24))
        # Frames are searched at most this wide: a Haar pass costs ~4x at 640 px than at 320 px.
        self.max_width = int(options.get("max_width", 320))
        self.max_frames = int(options.get("max_frames", 9000))
        # CascadeClassifier is not safe to share between threads; loading one takes ~20 ms.
        self._local = threading.local()

    def _cascade(self) -> Any:
        found = getattr(self._local, "cascade", None)
        if found is None:
            found = self._local.cascade = self.cv2.CascadeClassifier(self.path)
        return found

    def detect(self, image: Any) -> list[list[int]]:
        """Faces in a BGR image as [x, y, w, h] in its own pixels (searched at <= max_width)."""
        cv2 = self.cv2
        height, width = image.shape[:2]
        factor = min(1.0, self.max_width / width)
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
        if factor < 1.0:
            gray = cv2.resize(gray, (round(width * factor), round(height * factor)))
        found = self._cascade().detectMultiScale(
            cv2.equalizeHist(gray),
            scaleFactor=self.scale,
            minNeighbors=self.neighbors,
            minSize=(self.min_size, self.min_size),
        )
        return [[round(int(v) / factor) for v in box] for box in found]

    def warmup(self) -> None:
        import numpy as np

        self.detect(np.zeros((120, 160, 3), dtype=np.uint8))

    def stream(self, item: dict[str, Any]) -> Iterator[dict[str, Any]]:
        cv2 = self.cv2
        every = max(1, int(item.get("every") or 1))
        preview = bool(item.get("preview"))
        capture = cv2.VideoCapture(str(item["path"]))
        try:
            if not capture.isOpened():
                if _container(str(item["path"])):
                    raise MediaInputError(
                        "truncated_video",
                        "The file starts like a video container but cannot be decoded: "
                        "it is truncated or corrupt.",
                    )
                raise MediaInputError(
                    "unsupported_video", "Not a video this server can decode.", status=415
                )
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0) or 25.0
            declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            index = analysed = with_faces = 0
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if index >= self.max_frames:
                    raise MediaInputError(
                        "video_too_long", f"More than {self.max_frames} frames.", status=413
                    )
                if index % every == 0:
                    faces = self.detect(frame)
                    analysed += 1
                    with_faces += bool(faces)
                    height, width = frame.shape[:2]
                    yield {
                        "event": "result",
                        "frame": index,
                        "time": round(index / fps, 3),
                        "width": width,
                        "height": height,
                        "faces": faces,
                    }
                    if preview:
                        yield {"frame": index, "jpeg": self._annotated(frame, faces)}
                index += 1
            if index == 0:
                raise MediaInputError("unsupported_video", "The video has no decodable frame.")
            # Containers that declare their length reveal a file cut short.
            if declared and index < declared * 0.98 - 1:
                raise MediaInputError(
                    "truncated_video",
                    f"The video ends after {index} of the {declared} frames it declares.",
                )
            yield {
                "event": "summary",
                "frames": index,
                "analysed": analysed,
                "frames_with_faces": with_faces,
                "fps": round(fps, 3),
                "duration": round(index / fps, 3),
            }
        finally:
            capture.release()

    def _annotated(self, frame: Any, faces: list[list[int]]) -> bytes:
        cv2 = self.cv2
        for x, y, w, h in faces:
            cv2.rectangle(frame, (x, y), (x + w, y + h), (0, 255, 0), 2)
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 75])
        return bytes(jpeg.tobytes()) if ok else b""

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One still image (``image_base64``: JPEG or PNG) per item → its faces."""
        import numpy as np

        out = []
        for item in batch:
            raw = base64.b64decode(item.get("image_base64") or "", validate=False)
            image = self.cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), self.cv2.IMREAD_COLOR)
            if image is None:
                raise MediaInputError("unsupported_image", "Not a JPEG or PNG image.")
            height, width = image.shape[:2]
            out.append({"faces": self.detect(image), "width": width, "height": height})
        return out


def _container(path: str) -> bool:
    """Whether the file begins with the signature of a video container (MP4/QuickTime, AVI,
    Matroska/WebM): such a file that does not open is broken rather than of the wrong type."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    return head[4:8] == b"ftyp" or head[8:12] == b"AVI " or head[:4] == b"\x1aE\xdf\xa3"
