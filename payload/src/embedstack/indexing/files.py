"""Which files to index: tracked files in a git work tree, else all not excluded by .gitignore.

Binaries (a NUL byte in the first 8 KiB, or not UTF-8) and files over the size limit (Roo Code's
MAX_FILE_SIZE_BYTES, 1 MiB) are skipped and counted. Paths are POSIX paths relative to the root,
as Roo Code stores `filePath`.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

MAX_FILE_BYTES = 1024 * 1024
# Never worth indexing, whatever .gitignore says (Roo Code skips the same kind of directories).
ALWAYS_SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv", "venv", ".tox"})


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str  # relative to the root, "/"-separated
    text: str
    sha256: str


@dataclass(slots=True)
class Walk:
    files: list[SourceFile] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count


def _git_files(root: Path) -> list[str] | None:
    try:
        inside = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True, timeout=30
        )
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        # Tracked files only (a file deleted from the work tree but still in the index is dropped below).
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached"],
            capture_output=True,
            timeout=120,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = sorted({n for n in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if n})
    return [n for n in names if (root / n).is_file()]


def _gitignore_files(root: Path) -> list[str]:
    specs: list[tuple[str, pathspec.PathSpec]] = []
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        ignore = Path(dirpath) / ".gitignore"
        if ignore.is_file():
            specs.append((rel_dir, pathspec.PathSpec.from_lines("gitignore", ignore.read_text().splitlines())))

        def ignored(rel: str) -> bool:
            return any(rel.startswith(base) and spec.match_file(rel[len(base) :]) for base, spec in specs)

        dirnames[:] = sorted(d for d in dirnames if d not in ALWAYS_SKIPPED_DIRS and not ignored(f"{rel_dir}{d}/"))
        out.extend(f"{rel_dir}{f}" for f in sorted(filenames) if not ignored(f"{rel_dir}{f}"))
    return out


def _matches(rel: str, globs: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, g) or fnmatch.fnmatchcase(name, g) for g in globs)


def list_files(root: Path, include: list[str], exclude: list[str]) -> list[str]:
    names = _git_files(root)
    if names is None:
        names = _gitignore_files(root)
    names = [n for n in names if not set(n.split("/")[:-1]) & ALWAYS_SKIPPED_DIRS]
    if include:
        names = [n for n in names if _matches(n, include)]
    return [n for n in names if not _matches(n, exclude)]


def read_files(root: Path, names: list[str], max_bytes: int = MAX_FILE_BYTES) -> Walk:
    walk = Walk()
    for name in names:
        path = root / name
        try:
            if path.stat().st_size > max_bytes:
                walk.skipped["too large"] += 1
                continue
            data = path.read_bytes()
        except OSError:
            walk.skipped["unreadable"] += 1
            continue
        if b"\0" in data[:8192]:
            walk.skipped["binary"] += 1
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            walk.skipped["binary"] += 1
            continue
        walk.files.append(SourceFile(name, text, hashlib.sha256(data).hexdigest()))
    return walk
