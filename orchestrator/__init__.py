"""The user-facing service: FastAPI in front of the IndexTTS-2 models served by Triton."""

__version__ = "0.1.0"
