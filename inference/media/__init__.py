"""Media streams (docs/media.md): transcription, speech, video and translation, produced by a
model version's ``stream`` in a Celery task and delivered through the stream log."""
