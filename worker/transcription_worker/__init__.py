"""OpenAI-compatible speech-to-text service on faster-whisper (the opsctl worker image)."""

__version__ = "0.1.0"
