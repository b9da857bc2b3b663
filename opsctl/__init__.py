"""opsctl: the operations toolkit of the speech-transcription platform."""

__version__ = "0.1.0"
