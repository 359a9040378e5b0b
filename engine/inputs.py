"""Which recordings a batch reads (``analyze``, the Python API's ``analyze``): files, folders (recursive), globs.

A file named on the command line is always read, whatever its name ends with (decoding says
whether it is audio). Folders, and folders a glob matches, are searched recursively for names with
an audio extension, skipping hidden files and folders; so a recorder's card with its logs and
settings files next to the audio can be given as it is. Each recording gets an output name: its
path below the folder given (with the folder's own name in front), or its file name; two
recordings that would share a name get ``~2``, ``~3`` appended in the order they were found.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".w64", ".rf64", ".bwf", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff",
    ".aifc", ".caf", ".au", ".snd", ".m4a", ".m4b", ".mp4", ".aac", ".3gp", ".amr", ".wma", ".webm", ".mka",
})  # fmt: skip


@dataclass(frozen=True)
class Recording:
    """A recording to analyse."""

    path: Path  # as given: relative to the working folder when the input was (tables then move between machines)
    name: str  # output name, relative and '/'-separated, unique within the run


def is_audio_name(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def walk_audio(folder: Path) -> Iterator[Path]:
    """Audio files below ``folder``, sorted, hidden entries skipped, symlinked folders not followed."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and is_audio_name(path):
                yield path


def expand(item: str) -> list[tuple[Path, str]] | None:
    """(file, output name) pairs for one command-line input; None when it names nothing."""
    path = Path(item).expanduser()
    if path.is_file():
        return [(path, path.name)]
    if path.is_dir():
        base = path.resolve().name or "root"
        return [(f, f"{base}/{f.relative_to(path).as_posix()}") for f in walk_audio(path)]
    if glob.has_magic(item):
        found: list[tuple[Path, str]] = []
        for match in sorted(glob.glob(os.path.expanduser(item), recursive=True)):
            found += expand(match) or []
        return found
    return None


def find_recordings(inputs: Sequence[str]) -> tuple[list[Recording], list[tuple[str, str]]]:
    """The recordings named by ``inputs``, each once, and (input, reason) for inputs naming none."""
    recordings: list[Recording] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()
    names: set[str] = set()
    for item in inputs:
        found = expand(item)
        if found is None:
            problems.append((item, "no such file or folder, and no file matches it as a pattern"))
            continue
        if not found:
            what = (
                "matches no audio file"
                if glob.has_magic(item) and not Path(item).is_dir()
                else "holds no audio file"
            )
            problems.append((item, f"{what} (looked for {', '.join(sorted(AUDIO_EXTENSIONS))})"))
            continue
        for path, name in found:
            absolute = path.resolve()  # one recording reached twice (a link, "a/../a") is read once
            if absolute in seen:
                continue
            seen.add(absolute)
            recordings.append(Recording(path, unique(name, names)))
    return recordings, problems


def unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name~2``, ``name~3``, ... whichever is free; recorded as taken."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}~{n}"
    taken.add(candidate)
    return candidate
