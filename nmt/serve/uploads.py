"""Translated files waiting to be downloaded (`/translate_file` answers with a URL, LibreTranslate's way).

Each file lies in a directory of the server's own under a random name (`TOKEN.FILENAME`, 128 random
bits: the name is the only key), for `keep_seconds` or until `most` newer ones push it out, and
the directory goes when the server stops.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

_NAME = re.compile(r"^[0-9a-f]{32}\.[^/\\\x00]{1,200}$")


def safe_filename(name: str) -> str:
    """The last part of an uploaded file's name, with what a file system or a header could trip on replaced."""
    base = re.split(r"[/\\]", name)[-1].strip().strip(".")
    cleaned = re.sub(r"[^\w.\- ]", "_", base)[-120:]
    return cleaned or "file"


class TranslatedFiles:
    def __init__(self, keep_seconds: float = 3600.0, most: int = 200) -> None:
        self.keep_seconds, self.most = keep_seconds, most
        self._directory: Optional[Path] = None
        self._lock = threading.Lock()

    @property
    def directory(self) -> Path:
        with self._lock:
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="nmt-serve-files-"))
            return self._directory

    def add(self, filename: str, data: bytes) -> str:
        """Keep `data`; return the name to download it by."""
        name = f"{secrets.token_hex(16)}.{safe_filename(filename)}"
        directory = self.directory
        (directory / f".{name}.tmp").write_bytes(data)
        (directory / f".{name}.tmp").rename(directory / name)
        self._expire(directory)
        return name

    def get(self, name: str) -> Optional[tuple[bytes, str]]:
        """(the file's bytes, its original name), or None for a name that is not a kept file."""
        if not _NAME.match(name) or self._directory is None:
            return None
        path = self._directory / name
        try:
            return path.read_bytes(), name.split(".", 1)[1]
        except OSError:
            return None

    def _expire(self, directory: Path) -> None:
        files = sorted((p for p in directory.iterdir() if _NAME.match(p.name)), key=lambda p: p.stat().st_mtime)
        now = time.time()
        for index, path in enumerate(files):
            if index < len(files) - self.most or now - path.stat().st_mtime > self.keep_seconds:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None
