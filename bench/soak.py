"""Soak run: thousands of real and hostile uploads from many clients; memory must stay flat, no 5xx.

A ``birdsearch serve`` subprocess on loopback, with the service's default limits, answers with a
distilled encoder of the toy architecture (random weights: the answers' quality is not the point)
over an index the indexer builds from drawn photos (``bench/service_latency.py``'s world). Clients
send a deterministic mix:

- **real**: every recording in ``tests/data/audio`` and, where present, ``../shared/fixtures/real``
  (16 to 48 kHz; FLAC, Vorbis, Opus, WAV, MP3; mono and stereo; 0.14 s to 120 s; some of them empty
  or silent);
- **hostile**: an empty file, a truncated FLAC, a photo and a text file sent as audio, a 64 KB HTTP
  header, random bytes, digital silence, a 10 ms recording, a WAV longer than the duration limit, a
  body over the upload limit, no file at all, and bad parameters (k, window, hop, mode).

Memory is the server's resident set (its process and any children, from /proc), read at rest
(no request in flight) after a warm-up share of the requests and after each quarter of the rest;
the run fails when the last reading is ``--max-growth-mb`` or more above the first, or when any
answer is a 5xx or no answer came. The warm-up is a quarter of the requests: on the project's
2-core machine the resident set was still filling over the first 10% (a few concurrent rounds of
the largest uploads: 40 to 120 MB below the later readings, which then went up and down by tens of
MB without a trend), so a shorter warm-up measures the allocator reaching its working size, not a
leak. Bounded in requests and in time (``--time-limit``); the server is stopped by its pid.

    python bench/soak.py                 # 2,000 requests from 32 clients
    python bench/soak.py --smoke         # 60 requests from 4 clients (a default-suite test runs this)
    python bench/soak.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from service_latency import build_world, free_port, wait_ready  # noqa: E402

AUDIO_DIRS = [ROOT / "tests" / "data" / "audio", ROOT.parent / "shared" / "fixtures" / "real" / "audio"]
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".opus", ".mp3"}
INVALID_REQUEST = "Invalid HTTP request received."  # uvicorn's log line for a request it cannot parse
BAD_PARAMS = [{"k": "0"}, {"k": "many"}, {"window_s": "0.2"}, {"hop_s": "0"}, {"mode": "telepathy"},
              {"species_k": "-3"}, {"window_s": "999"}]  # fmt: skip


@dataclass
class Upload:
    """One request: what kind it is, the file (or None), form fields and extra headers."""

    kind: str
    body: bytes | None
    filename: str = "upload.bin"
    fields: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    import soundfile as sf

    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype=subtype)
    return out.getvalue()


def real_uploads() -> list[Upload]:
    paths = sorted(p for d in AUDIO_DIRS if d.is_dir() for p in d.iterdir() if p.suffix in AUDIO_SUFFIXES)
    if not paths:
        raise SystemExit(f"no recordings found in {', '.join(map(str, AUDIO_DIRS))}")
    return [Upload("real", p.read_bytes(), p.name) for p in paths]


def hostile_uploads(max_duration_s: float, max_upload_bytes: int) -> list[Upload]:
    """One of each hostile kind (bad parameters: one per entry of BAD_PARAMS)."""
    rng = np.random.default_rng(0)
    flac = (ROOT / "tests" / "data" / "audio" / "perch_21100_36_48_16k_10s.flac").read_bytes()
    photo = ROOT / "tests" / "data" / "images" / "phoebe_Junco_hyemalis.jpg"
    tone = (0.2 * np.sin(2 * np.pi * 2000 * np.arange(16_000) / 16_000)).astype(np.float32)
    long_rate = 4000  # the longest recording that is cheap to send: 8-bit mono at 4 kHz
    too_long = (128 + 20 * rng.standard_normal(int((max_duration_s + 5) * long_rate))).clip(0, 255)
    uploads = [
        Upload("empty", b"", "empty.wav"),
        Upload("truncated", flac[: len(flac) // 3], "cut.flac"),
        Upload("wrong_type", photo.read_bytes(), "photo.jpg"),
        Upload("wrong_type", b"Sound of a Dark-eyed Junco\n" * 200, "notes.txt"),
        Upload("huge_header", wav_bytes(tone, 16_000), "tone.wav", headers={"X-Filler": "a" * 65_536}),
        Upload("random_bytes", rng.bytes(50_000), "noise.mp3"),
        Upload("silence", wav_bytes(np.zeros(48_000 * 5, dtype=np.float32), 48_000), "silence.wav"),
        Upload("very_short", wav_bytes(tone[:160], 16_000), "click.wav"),  # 10 ms
        Upload("too_long", wav_bytes((too_long - 128) / 128, long_rate, "PCM_U8"), "long.wav"),
        Upload("oversize", rng.bytes(max_upload_bytes + 1_000_000), "huge.flac"),
        Upload("no_file", None),
    ]
    uploads += [Upload("bad_params", wav_bytes(tone, 16_000), "tone.wav", fields=p) for p in BAD_PARAMS]
    return uploads


def plan(requests: int, seed: int, max_duration_s: float, max_upload_bytes: int) -> list[Upload]:
    """Half real recordings, half hostile kinds in equal shares, shuffled; every kind at least once."""
    real, hostile = real_uploads(), hostile_uploads(max_duration_s, max_upload_bytes)
    rng = np.random.default_rng(seed)
    by_kind: dict[str, list[Upload]] = defaultdict(list)
    for upload in hostile:
        by_kind[upload.kind].append(upload)
    kinds = sorted(by_kind)
    chosen = list(hostile)  # each hostile upload once
    while len(chosen) < requests:
        if rng.random() < 0.5:
            chosen.append(real[int(rng.integers(len(real)))])
        else:
            options = by_kind[kinds[int(rng.integers(len(kinds)))]]
            chosen.append(options[int(rng.integers(len(options)))])
    chosen = chosen[:requests]
    rng.shuffle(chosen)
    return chosen


# -- the server -------------------------------------------------------------------------------


class Server:
    """``birdsearch serve`` on 127.0.0.1 in a subprocess, its log in a file, stopped by its pid."""

    def __init__(self, world: dict[str, Path], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "BIRDSEARCH_INDEX_ROOT": str(world["index"]),
            "BIRDSEARCH_CHECKPOINT": str(world["encoder"]),
            "BIRDSEARCH_CASCADE": "never",
            "BIRDSEARCH_DEVICE": "cpu",
        }
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        command = [sys.executable, "-m", "birdsearch.cli", "-q", "serve", "--host", "127.0.0.1",
                   "--port", str(self.port)]  # fmt: skip
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_ready(self.url, self.process, 300, lambda: self.log.read_text()[-2000:])
        return self

    def limits(self) -> tuple[float, int]:
        """(max duration s, max upload bytes) the server runs with."""
        from birdsearch.service.settings import load_settings

        settings = load_settings()
        return settings.max_duration_s, settings.max_upload_bytes

    def rss_bytes(self) -> int:
        """Resident memory of the server process and its descendants (Linux /proc)."""
        tree = process_tree(self.process.pid)
        total = 0
        for pid in tree:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
            total += kb * 1024
        return total

    def __exit__(self, *exc: Any) -> None:
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def process_tree(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree = {root}
    while True:
        grown = tree | {pid for pid, ppid in parents.items() if ppid in tree}
        if grown == tree:
            return tree
        tree = grown


# -- clients ------------------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    errors: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    sent: int = 0

    def count_5xx(self) -> int:
        return sum(n for counts in self.statuses.values() for status, n in counts.items() if status >= 500)

    protocol_refusals: int = 0  # requests uvicorn refused as invalid HTTP (counted in its log)

    def dropped(self, kind: str) -> int:
        return sum(self.errors.get(kind, Counter()).values())

    def refused_at_protocol(self) -> int:
        """Huge-header requests whose connection the server closed after logging them as invalid.

        h11 (uvicorn's HTTP parser) buffers at most 16 KB of an incomplete request head: a 64 KB
        header that arrives in several reads is answered 400 and the connection closed while the
        client is still sending, so the client reads a reset instead of the 400. Counted only as
        far as the server's log confirms them.
        """
        return min(self.dropped("huge_header"), self.protocol_refusals)

    def no_answer(self) -> int:
        return sum(self.dropped(kind) for kind in self.errors) - self.refused_at_protocol()


async def send(client: Any, url: str, upload: Upload, tally: Tally) -> None:
    import httpx

    if upload.kind == "oversize":
        await send_declared_oversize(url, upload, tally)
        return
    files = {"audio": (upload.filename, upload.body)} if upload.body is not None else None
    data = upload.fields or ({"k": "5"} if files is None else None)
    try:
        response = await client.post(f"{url}/query", files=files, data=data, headers=upload.headers)
        tally.statuses[upload.kind][response.status_code] += 1
    except httpx.HTTPError as e:
        tally.errors[upload.kind][f"{type(e).__name__}: {e}"[:120]] += 1


async def send_declared_oversize(url: str, upload: Upload, tally: Tally) -> None:
    """An upload over the limit, sent as a careful client does: headers first, then read the answer.

    The server answers 413 as soon as it reads the declared Content-Length and closes the
    connection; a client that writes the whole body first (httpx) finds the connection closed
    before it can read that answer.
    """
    host, port = url.removeprefix("http://").split(":")
    boundary = "soak-boundary"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="{upload.filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()  # fmt: skip
    length = len(head) + len(upload.body) + len(f"\r\n--{boundary}--\r\n")
    request = (f"POST /query HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {length}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()  # fmt: skip
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request + head + upload.body[:65_536])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=60)
        writer.close()
        tally.statuses[upload.kind][int(status_line.split()[1])] += 1
    except (TimeoutError, OSError, IndexError, ValueError) as e:
        tally.errors[upload.kind][type(e).__name__] += 1


async def run_clients(
    url: str, uploads: list[Upload], clients: int, deadline: float, on_sent, tally: Tally
) -> Tally:
    """``clients`` connections taking uploads in order until none is left or ``deadline`` passes."""
    import httpx

    queue = list(reversed(uploads))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            while queue and time.monotonic() < deadline:
                upload = queue.pop()
                await send(client, url, upload, tally)
                tally.sent += 1
                on_sent(tally.sent)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return tally


# -- the run ------------------------------------------------------------------------------------


def soak(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Warm-up requests, a reading at rest, the rest of the requests, a reading at rest."""
    world = build_world(workdir, "toy", args.gallery_images)
    log = workdir / "server.log"
    with Server(world, log) as server:
        max_duration_s, max_upload_bytes = server.limits()
        uploads = plan(args.requests, args.seed, max_duration_s, max_upload_bytes)
        warm_up = max(1, int(len(uploads) * args.warm_up))
        every = max(1, len(uploads) // 10)
        samples: list[tuple[int, float]] = []  # (sent, resident MB) under load: a leak climbs, a plateau not

        def on_sent(count: int) -> None:
            if count % every == 0:
                samples.append((count, round(server.rss_bytes() / 2**20, 1)))

        def at_rest() -> int:
            time.sleep(args.settle_s)  # in-flight cleanup (spooled uploads, buffers) finishes
            return server.rss_bytes()

        tally, at_rest_mb = Tally(), []
        started = time.monotonic()
        deadline = started + args.time_limit
        # Readings at rest after the warm-up and after each quarter of the rest: a leak climbs
        # from one to the next, an allocator reaching its working size levels off.
        bounds = [0, warm_up, *(warm_up + (len(uploads) - warm_up) * q // 4 for q in (1, 2, 3, 4))]
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            part = uploads[start:stop]
            asyncio.run(run_clients(server.url, part, args.clients, deadline, on_sent, tally))
            at_rest_mb.append((tally.sent, round(at_rest() / 2**20, 1)))
        elapsed = time.monotonic() - started
        alive = server.process.poll() is None
        tally.protocol_refusals = log.read_text().count(INVALID_REQUEST)
    if tally.count_5xx() or tally.no_answer() or not alive:
        sys.stderr.write(f"server log (last lines):\n{log.read_text()[-4000:]}\n")
    growth = at_rest_mb[-1][1] - at_rest_mb[0][1]
    return {
        "machine": machine(),
        "requests_planned": len(uploads),
        "requests_sent": tally.sent,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "warm_up_requests": warm_up,
        "rss_after_warm_up_mb": at_rest_mb[0][1],
        "rss_end_mb": at_rest_mb[-1][1],
        "rss_growth_mb": round(growth, 1),
        "rss_at_rest_mb_by_requests_sent": at_rest_mb,
        "rss_mb_by_requests_sent": samples,
        "server_alive": alive,
        "status_5xx": tally.count_5xx(),
        "no_answer": tally.no_answer(),
        "protocol_refusals": tally.refused_at_protocol(),
        "statuses": {kind: dict(sorted(c.items())) for kind, c in sorted(tally.statuses.items())},
        "errors": {kind: dict(c) for kind, c in sorted(tally.errors.items())},
    }


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return f"{len(os.sched_getaffinity(0))} cores of {cpu}, Python {platform.python_version()}"


def render(report: dict[str, Any]) -> str:
    lines = [
        f"Soak: {report['requests_sent']}/{report['requests_planned']} requests from {report['clients']} "
        f"clients in {report['seconds']} s on {report['machine']}",
        f"resident memory at rest after {report['warm_up_requests']} warm-up requests: "
        f"{report['rss_after_warm_up_mb']} MB; at the end: {report['rss_end_mb']} MB "
        f"(growth {report['rss_growth_mb']} MB)",
        "resident MB at rest by requests sent: "
        + ", ".join(f"{n}: {mb:g}" for n, mb in report["rss_at_rest_mb_by_requests_sent"]),
        "resident MB under load by requests sent: "
        + ", ".join(f"{n}: {mb:g}" for n, mb in report["rss_mb_by_requests_sent"]),
        f"5xx answers: {report['status_5xx']}; requests without an answer: {report['no_answer']} "
        f"(besides {report['protocol_refusals']} huge-header requests refused as invalid HTTP, per the server's log)",
        "",
        "| kind | answers by status |",
        "|---|---|",
    ]
    for kind, counts in report["statuses"].items():
        lines.append(f"| {kind} | {', '.join(f'{s}: {n}' for s, n in counts.items())} |")
    for kind, counts in report["errors"].items():
        lines.append(f"| {kind} (no answer) | {', '.join(f'{e}: {n}' for e, n in counts.items())} |")
    return "\n".join(lines)


def failures(report: dict[str, Any], max_growth_mb: float) -> list[str]:
    problems = []
    if report["status_5xx"]:
        problems.append(f"{report['status_5xx']} answers were 5xx")
    if report["no_answer"]:
        problems.append(f"{report['no_answer']} requests got no answer")
    if report["rss_growth_mb"] >= max_growth_mb:
        problems.append(f"resident memory grew by {report['rss_growth_mb']} MB (limit {max_growth_mb} MB)")
    if not report["server_alive"]:
        problems.append("the server died")
    if report["requests_sent"] < report["requests_planned"]:
        problems.append(f"only {report['requests_sent']} of {report['requests_planned']} sent in time")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="60 requests from 4 clients")
    parser.add_argument(
        "--warm-up", type=float, default=0.25, help="share of requests before the first reading (0.25)"
    )
    parser.add_argument("--time-limit", type=float, default=1200, help="stop sending after this many seconds")
    parser.add_argument("--max-growth-mb", type=float, default=50.0)
    parser.add_argument("--settle-s", type=float, default=2.0, help="rest before each memory reading")
    parser.add_argument("--gallery-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.smoke:  # half the requests warm up: the model's first allocations are not growth
        args.requests, args.clients, args.warm_up, args.gallery_images = 60, 4, 0.5, 24
        args.settle_s = min(args.settle_s, 0.5)  # 5 readings: 2.5 s of rest, not 10
    if args.requests < 1 or args.clients < 1 or not 0 < args.warm_up < 1:
        parser.error("--requests and --clients must be at least 1, --warm-up between 0 and 1")
    with tempfile.TemporaryDirectory(prefix="birdsearch-soak-") as tmp:
        report = soak(args, Path(tmp))
    sys.stdout.write(render(report) + "\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    problems = failures(report, args.max_growth_mb)
    for problem in problems:
        sys.stderr.write(f"soak failed: {problem}\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
