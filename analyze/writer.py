"""``analyze``'s output folder: per-recording files and state files, combined tables, failures, run.json.

Each recording's files are written atomically, then a state file that records the settings' hash
and the recording's size and time, so that a rerun with the same settings skips what is done. The
combined tables are rebuilt at the end of every run from the results of the recordings named in it.
What the files show of a result (merged, named, its path) is ``present.Presentation``'s.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from birdsearch.analyze import formats
from birdsearch.analyze.present import Presentation
from birdsearch.engine.detections import RecordingResult
from birdsearch.engine.inputs import Recording
from birdsearch.files import write_atomic

STATE_DIR = ".birdsearch"  # per-recording state files, below the output folder
RUN_FILE = "run.json"
FAILURES_FILE = "failures.csv"
COMBINED_NAME = "combined"
FILE_LIST_SUFFIX = ".birdsearch.files.txt"  # the combined Raven table's recordings, in order


class Outputs:
    """The output folder: per-recording files, state files, combined tables, failures.

    A state file keeps the engine's result as it came (``result``) with the hash of the settings
    that decided it and the hash of how it was shown (``Presentation``): a rerun with the same
    settings shows it again, rewriting the files from the state when only the showing changed.
    """

    def __init__(self, out: Path, chosen: Sequence[str], digest: str, shown: Presentation = Presentation()):
        self.out = out
        self.formats = list(chosen)
        self.digest = digest
        self.shown = shown

    def path(self, name: str, fmt: str) -> Path:
        return self.out / f"{name}{formats.SUFFIXES[fmt]}"

    def state_path(self, name: str) -> Path:
        return self.out / STATE_DIR / f"{name}.json"

    @staticmethod
    def fingerprint(path: Path) -> dict[str, int]:
        stat = path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def done(self, recording: Recording) -> RecordingResult | None:
        """The stored result when this recording was analysed with these settings and is unchanged;
        its files are written again when they are missing or were shown another way."""
        try:
            state = json.loads(self.state_path(recording.name).read_text())
            if state.get("settings") != self.digest or state.get("source") != self.fingerprint(
                recording.path
            ):
                return None
            result = RecordingResult.from_dict(state["result"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        result = replace(result, path=str(recording.path))  # as given this time
        files = all(self.path(recording.name, fmt).is_file() for fmt in self.formats)
        if not files or state.get("shown") != self.shown.digest():
            self.write(recording, result)
        return result

    def write(self, recording: Recording, result: RecordingResult) -> None:
        """The recording's files, then its state file (so a crash in between redoes the recording)."""
        shown = self.shown(result)
        for fmt in self.formats:
            text = formats.render(fmt, [shown], table=self.shown.table)
            write_atomic(self.path(recording.name, fmt), text)
        state = {
            "settings": self.digest,
            "shown": self.shown.digest(),
            "source": self.fingerprint(recording.path),
            "result": result.to_dict(),
        }
        write_atomic(self.state_path(recording.name), json.dumps(state))

    def write_combined(self, results: Sequence[RecordingResult]) -> None:
        shown = [self.shown(r) for r in results]
        for fmt in self.formats:
            if fmt in formats.COMBINED:
                text = formats.render(fmt, shown, combined=True, table=self.shown.table)
                write_atomic(self.out / f"{COMBINED_NAME}{formats.SUFFIXES[fmt]}", text)
        if "raven" in self.formats:
            files = "".join(f"{r.path}\n" for r in shown)
            write_atomic(self.out / f"{COMBINED_NAME}{FILE_LIST_SUFFIX}", files)

    def write_failures(self, failures: Sequence[tuple[str, str, str]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(("file", "code", "reason"))
        writer.writerows(failures)
        write_atomic(self.out / FAILURES_FILE, buffer.getvalue())

    def write_run(self, run: dict) -> None:
        """``run.json``: the settings, the runner's facts and the summary of this run."""
        write_atomic(self.out / RUN_FILE, json.dumps(run, indent=2, default=str) + "\n")
