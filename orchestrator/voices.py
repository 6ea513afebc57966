"""Registered voices: a name -> the reference audio, stored once on disk by content hash.

    <voices_dir>/index.json          {"voices": {name: {sha256, duration_s, sample_rate, created_at}}}
    <voices_dir>/audio/<sha256>      the uploaded bytes, as sent (WAV/FLAC/OGG)

Two names with the same audio share one file; it goes when the last name does. The conditioning of a
voice lives in the pipeline's LRU (same key as an upload of the same bytes), so a voice that fell out
of the cache is recomputed from its stored audio on next use. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from orchestrator.errors import VoiceExistsError, VoiceNotFoundError

VOICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


@dataclass(frozen=True)
class VoiceRecord:
    name: str
    sha256: str
    duration_s: float
    sample_rate: int
    created_at: str  # ISO 8601, UTC


class VoiceStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = asyncio.Lock()

    @property
    def _index_path(self) -> Path:
        return self.directory / "index.json"

    def _audio_path(self, sha256: str) -> Path:
        return self.directory / "audio" / sha256

    def _read_index(self) -> dict[str, VoiceRecord]:
        if not self._index_path.is_file():
            return {}
        raw = json.loads(self._index_path.read_text())
        return {name: VoiceRecord(name=name, **entry) for name, entry in raw.get("voices", {}).items()}

    def _write_index(self, voices: dict[str, VoiceRecord]) -> None:
        payload = {"voices": {name: {k: v for k, v in asdict(record).items() if k != "name"}
                              for name, record in sorted(voices.items())}}
        self._atomic_write(self._index_path, json.dumps(payload, indent=1).encode())

    def _atomic_write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def list(self) -> list[VoiceRecord]:
        return sorted(self._read_index().values(), key=lambda record: record.name)

    def exists(self, name: str) -> bool:
        return name in self._read_index()

    def get(self, name: str) -> VoiceRecord:
        record = self._read_index().get(name)
        if record is None:
            raise VoiceNotFoundError(f"voice {name!r} is not registered (POST /v1/voices registers one)",
                                     field="voice")
        return record

    def audio(self, record: VoiceRecord) -> bytes:
        return self._audio_path(record.sha256).read_bytes()

    async def add(self, name: str, sha256: str, data: bytes, duration_s: float, sample_rate: int) -> VoiceRecord:
        async with self._lock:
            voices = self._read_index()
            if name in voices:
                raise VoiceExistsError(f"voice {name!r} already exists; DELETE it first", field="name")
            if not self._audio_path(sha256).is_file():
                self._atomic_write(self._audio_path(sha256), data)
            record = VoiceRecord(name, sha256, round(duration_s, 3), sample_rate,
                                 datetime.now(timezone.utc).isoformat(timespec="seconds"))
            voices[name] = record
            self._write_index(voices)
            return record

    async def remove(self, name: str) -> None:
        async with self._lock:
            voices = self._read_index()
            record = voices.pop(name, None)
            if record is None:
                raise VoiceNotFoundError(f"voice {name!r} is not registered", field="name")
            self._write_index(voices)
            if all(other.sha256 != record.sha256 for other in voices.values()):
                self._audio_path(record.sha256).unlink(missing_ok=True)
