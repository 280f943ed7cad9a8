"""Writing files and directories atomically: under a temporary name beside the target, renamed onto it
when complete, so that a reader finds the whole new version or the old one, never a part.

One naming scheme for every temporary: `.NAME.tmpPID` (hidden, so no listing of the target's
siblings matches it; the process id keeps two processes that write the same target apart), and
`.NAME.tmp` where one process owns the directory (a run's checkpoints), so that the next write
removes what a killed one left. A suffix the target has is kept at the end (`.curves.tmp12.png`),
for writers that choose the format by it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Literal

from nmt.errors import NMTError

Existing = Literal["replace", "keep", "empty"]


def temporary_path(target: Path, per_process: bool = True) -> Path:
    """The temporary name that `target` is written under (see the module docstring)."""
    target = Path(target)
    stem, suffix = (target.stem, target.suffix) if target.suffix else (target.name, "")
    return target.with_name(f".{stem}.tmp{os.getpid() if per_process else ''}{suffix}")


def remove(path: Path) -> None:
    """Delete a file or a directory so that a crash at any moment leaves it whole or gone, never with some
    files missing: a directory is renamed out of sight first (`.NAME.deleted`)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        trash = path.with_name(f".{path.name}.deleted")
        shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def publish(built: Path, target: Path, existing: Existing = "replace") -> Path:
    """Rename a completely written file or directory `built` onto `target`.

    A file replaces the target in one step. A directory cannot, so an existing target directory is
    first removed (`remove`) with existing="replace", or only if it is empty with existing="empty"
    (a directory a user named: OSError if it holds anything); with existing="keep" an existing one
    is left as it is and `built` dropped (another process wrote the same result first).
    """
    built, target = Path(built), Path(target)
    if built.is_dir() and target.exists():
        if existing == "keep":
            shutil.rmtree(built, ignore_errors=True)
            return target
        if existing == "empty":
            target.rmdir()
        else:
            remove(target)
    try:
        os.replace(built, target)
    except OSError:
        if existing != "keep" or not target.exists():
            raise
        shutil.rmtree(built, ignore_errors=True) if built.is_dir() else built.unlink(missing_ok=True)
    return target


def atomic_write(target: Path, write: Callable[[Path], object], existing: Existing = "replace",
                 per_process: bool = True) -> Path:
    """Call `write(temporary)` to write the file or directory at a temporary name beside `target`, then
    `publish` it there. If `write` raises, the temporary is removed and the error goes on; the target
    is untouched."""
    target = Path(target)
    tmp = temporary_path(target, per_process)
    _discard(tmp)  # left by a killed writer of the same name
    try:
        write(tmp)
        return publish(tmp, target, existing)
    except BaseException:
        _discard(tmp)
        raise


def save(target: Path, write: Callable[[Path], object]) -> Path:
    """`atomic_write` of an output the user named: an OSError (a full disk, no permission) becomes one
    NMTError naming the target."""
    try:
        return atomic_write(target, write)
    except OSError as exc:
        raise NMTError(f"{target}: cannot write ({exc.strerror or exc})") from None


def write_text(target: Path, text: str) -> Path:
    """Write `text` (UTF-8, newlines as given) to `target` atomically."""
    return atomic_write(target, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))


def write_bytes(target: Path, data: bytes) -> Path:
    """Write `data` to `target` atomically."""
    return atomic_write(target, lambda tmp: tmp.write_bytes(data))


def _discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
