"""Recorder files of many hours: read block by block, in memory that does not grow with their length.

A low-rate FLAC written block by block stands in for a recorder's file (cheap to make, and the
front end resamples it to 48 kHz like any other). One process analyses a one-minute file, then a
long one, and reports its peak resident memory after each: the long file may add at most
``GROWTH_BOUND`` to the peak, where holding its audio whole at 48 kHz would take
``hours * 691 MB`` (float32). Windows are 10 s every ``HOP_S`` so that the model's time stays
small: the whole file is still decoded, resampled and cut.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

RATE = 2_000  # Hz: the file is small and quick to write; the front end resamples it to 48 kHz
HOP_S = 600.0  # one 10 s window every 10 minutes
GROWTH_BOUND = 64 * 2**20  # bytes the long recording may add to the process's peak
FLOAT32_HOUR_AT_48K = 3600 * 48_000 * 4

PEAKS = """
import json, resource, sys
from pathlib import Path
from birdsearch.analyze.config import AnalyzeConfig
from birdsearch.analyze.run import analyze

index, encoder, out, hop_s = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
peaks = {}
for name in sys.argv[5:]:
    config = AnalyzeConfig(inputs=[name], out=out / Path(name).stem, index_root=index, checkpoint=encoder,
                           device="cpu", min_conf=-1.0, species_k=1, hop_s=hop_s, batch_size=8, workers=1,
                           progress=False)
    summary = analyze(config)
    assert summary.analysed == 1, summary.failures
    peaks[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
print(json.dumps(peaks))
"""


def recorder_file(path: Path, seconds: float, block_s: int = 600) -> Path:
    """A mono FLAC at ``RATE`` of a quiet tone and a chirp each minute, written a block at a time."""
    t = np.arange(block_s * RATE) / RATE
    block = 0.05 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 700 * t) * (t % 60 < 2)
    with sf.SoundFile(path, "w", RATE, 1, format="FLAC", subtype="PCM_16") as f:
        left = round(seconds * RATE)
        while left > 0:
            f.write(block[:left].astype(np.float32))
            left -= min(left, len(block))
    return path


def peaks_of(tmp_path: Path, index_root: Path, encoder: Path, long_hours: float) -> dict[str, int]:
    short = recorder_file(tmp_path / "minute.flac", 60)
    long = recorder_file(tmp_path / "long.flac", long_hours * 3600)
    run = subprocess.run(
        [sys.executable, "-c", PEAKS, str(index_root), str(encoder), str(tmp_path / "out"), str(HOP_S), str(short),
         str(long)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    peaks = json.loads(run.stdout.strip().splitlines()[-1])
    return {"short": peaks[str(short)], "long": peaks[str(long)]}


def check_bound(peaks: dict[str, int], tmp_path: Path, hours: float) -> None:
    growth = peaks["long"] - peaks["short"]
    assert growth < GROWTH_BOUND, f"{hours} h added {growth / 2**20:.0f} MiB to the peak of {peaks}"
    assert hours * FLOAT32_HOUR_AT_48K / 8 > GROWTH_BOUND  # the bound is far below holding the audio whole
    detections = (tmp_path / "out" / "long" / "combined.birdsearch.jsonl").read_text().splitlines()
    starts = sorted(json.loads(line)["start_s"] for line in detections)
    assert starts == [HOP_S * i for i in range(int(hours * 3600 // HOP_S))]  # every window, to the end


def test_an_hour_long_recording_adds_almost_nothing_to_peak_memory(tmp_path, index_root, tiny_models):
    peaks = peaks_of(tmp_path, index_root, tiny_models["encoder"], 1.0)
    check_bound(peaks, tmp_path, 1.0)


@pytest.mark.slow
def test_a_twelve_hour_recording_adds_almost_nothing_to_peak_memory(tmp_path, index_root, tiny_models):
    peaks = peaks_of(tmp_path, index_root, tiny_models["encoder"], 12.0)
    check_bound(peaks, tmp_path, 12.0)
