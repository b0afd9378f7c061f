"""Writing output files so that a reader never sees a half-written one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from crrelu_llm.errors import OutputError, OutputExistsError


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON, atomically (values JSON cannot hold are written as strings)."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, atomically."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def writable_dir(path: Path, flag: str = "--out") -> Path:
    """Create ``path`` (and its parents) and check that files can be written in it; otherwise a
    one-line :class:`OutputError` naming the directory and the option that chooses another."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OutputError(
            f"cannot write to {path} ({err.strerror or err}): choose another {flag} or fix its permissions"
        ) from None
    return path


def check_writable(path: Path, flag: str = "--out") -> Path:
    """What :func:`writable_dir` checks, without creating anything: ``path`` is a writable
    directory, or the nearest directory above it that exists is writable."""
    path = Path(path)
    existing = next((p for p in (path, *path.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        why = "not a directory" if existing is not None and not existing.is_dir() else "not writable"
        raise OutputError(f"cannot write to {path} ({existing} is {why}): choose another {flag} or fix its permissions")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_existing(out: Path, overwrite: bool) -> None:
    """An existing ``out`` is replaced only when the user asked (``overwrite``)."""
    if Path(out).exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it or choose another --out")


def write_directory_atomic(out: Path, overwrite: bool, write) -> None:
    """Call ``write(tmp_dir)`` and move the result to ``out`` only once it is complete.

    ``out`` is replaced only with ``overwrite``; otherwise an existing ``out`` is refused before
    anything is written."""
    out = Path(out).resolve()
    refuse_existing(out, overwrite)
    writable_dir(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the result gets the user's usual mode
    try:
        write(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
