"""The service over a real uvicorn on loopback: concurrency, hot reload under load, streaming limits.

Each server is ``birdsearch serve`` in a subprocess on a free port, stopped by its pid at the end.
"""

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

RECORDINGS = (
    "perch_21100_36_48_16k_10s.flac",
    "perch_21100_36_48_16k_10s.ogg",
    "librosa_robin_22k_mono.ogg",
    "oss_birds_10s_32k.wav",
    "maad_spinetail_44k1_12s.wav",
    "derived_spinetail_stereo_44k1.mp3",
    "derived_birds_stereo_48k.opus",
    "oss_veryshort_44k1_0.14s.wav",
    "birdnet_soundscape_48k_30s.flac",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, index_root, tiny_models, helpers):
    """One server for the module, over a private copy of the test index."""
    base = tmp_path_factory.mktemp("server")
    root = helpers.copy_index(index_root, base / "index")
    env = {
        "BIRDSEARCH_INDEX_ROOT": str(root),
        "BIRDSEARCH_CHECKPOINT": str(tiny_models["encoder"]),
        "BIRDSEARCH_STUDENT": str(tiny_models["student"]),
        "BIRDSEARCH_CASCADE": "always",
        "BIRDSEARCH_DEVICE": "cpu",
        "BIRDSEARCH_MAX_WAIT_MS": "10",
        "BIRDSEARCH_MAX_BATCH": "16",
        "BIRDSEARCH_MAX_UPLOAD_BYTES": str(2 * 2**20),
        "BIRDSEARCH_AUDIO_MEMORY_BYTES": str(64 * 2**20),
        "BIRDSEARCH_MAX_DECODED_BYTES": str(32 * 2**20),
        "BIRDSEARCH_ADMIN_KEY": "test-admin-key",
        "BIRDSEARCH_RELOAD_INTERVAL_S": "0.3",
        "BIRDSEARCH_CACHE": str(base / "cache"),
    }
    with helpers.Server(env, log=base / "server.log") as running:
        running.index_root = root
        yield running


def answer_key(body: dict) -> tuple:
    """What must not change between a sequential and a concurrent answer (scores within float noise)."""
    return (
        [s["species"] for s in body["species"]],
        [h["id"] for h in body["images"]],
        [[s["species"] for s in w["species"]] for w in body["timeline"]],
    )


def post_file(url: str, path, timeout: float = 120, **form) -> httpx.Response:
    with open(path, "rb") as f:
        return httpx.post(f"{url}/query", files={"audio": (path.name, f.read())}, data=form, timeout=timeout)


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    return sum(float(m) for m in re.findall(pattern, text))


def test_32_concurrent_clients_get_the_sequential_answers(server, helpers):
    paths = [helpers.audio_file(name) for name in RECORDINGS]
    sequential = {}
    for path in paths:
        r = post_file(server.url, path, hop_s="5")
        assert r.status_code == 200, r.text
        sequential[path.name] = r.json()
    before = httpx.get(f"{server.url}/metrics").text

    async def client(i: int, http: httpx.AsyncClient):
        path = paths[i % len(paths)]
        r = await http.post("/query", files={"audio": (path.name, path.read_bytes())}, data={"hop_s": "5"})
        return path.name, r

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            return await asyncio.gather(*(client(i, http) for i in range(32)))

    results = asyncio.run(main())
    for name, r in results:
        assert r.status_code == 200, r.text
        got, want = r.json(), sequential[name]
        assert answer_key(got) == answer_key(want), name
        np.testing.assert_allclose(
            [h["score"] for h in got["images"]], [h["score"] for h in want["images"]], atol=1e-4
        )
    after = httpx.get(f"{server.url}/metrics").text
    batches = metric(after, "birdsearch_batch_requests_count", 'mode="distilled"') - metric(
        before, "birdsearch_batch_requests_count", 'mode="distilled"'
    )
    requests_in_batches = metric(after, "birdsearch_batch_requests_sum", 'mode="distilled"') - metric(
        before, "birdsearch_batch_requests_sum", 'mode="distilled"'
    )
    assert requests_in_batches >= 32
    assert batches < requests_in_batches  # at least one forward pass served several requests


def raw_exchange(port: int, head: bytes, body_chunks=(), read_timeout: float = 10.0) -> tuple[bytes, int]:
    """Send ``head`` and then chunks until the server answers; (answer, body bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        answer = b""
        for chunk in body_chunks:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if answer:
                break
            try:
                sock.sendall(chunk)
                sent += len(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        sock.settimeout(read_timeout)
        try:
            while b"\r\n\r\n" not in answer or len(answer) < 20:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            answer += sock.recv(65536) if b'"code"' not in answer else b""
        except (ConnectionResetError, TimeoutError):
            pass
    return answer, sent


def test_oversize_upload_gets_413_while_streaming(server):
    limit = 2 * 2**20
    boundary = "xyz"
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="big.wav"\r\n\r\n'.encode()
    )
    # Declared too long: answered before any body byte is sent.
    head = (
        f"POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {100 * 2**20}\r\n\r\n"
    ).encode()
    answer, sent = raw_exchange(server.port, head)
    assert answer.startswith(b"HTTP/1.1 413") and b'"upload_too_large"' in answer
    assert sent == 0

    # Chunked, no length: refused once the limit is passed, long before the 100 MiB end.
    head = (
        f"POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()

    def chunks():
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
        block = b"\1" * 65536
        for _ in range(1600):  # 100 MiB if nobody stops us
            yield f"{len(block):x}\r\n".encode() + block + b"\r\n"
            time.sleep(0.001)

    answer, sent = raw_exchange(server.port, head, chunks())
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"upload_too_large" in answer
    assert sent < limit + 4 * 2**20  # the answer came while the body was still streaming
    assert httpx.get(f"{server.url}/readyz").status_code == 200


@pytest.mark.parametrize(
    "target",
    [
        "/static/../settings.py",
        "/static/..%2f..%2fservice%2fsettings.py",
        "/images/../../etc/passwd",
        "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/images/0/thumbnail/../../../etc/passwd",
        "//etc/passwd",
    ],  # fmt: skip
)
def test_path_tricks_over_the_wire_are_404(server, target):
    answer, _ = raw_exchange(
        server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 404"), (target, answer[:200])
    assert b"root:" not in answer and b"BaseSettings" not in answer


def test_memory_stays_bounded_through_a_barrage(server, helpers, real_fixtures):
    """16 long uploads at once plus every kind of bad input: the budget holds, the server stays up."""
    pid = int(httpx.get(f"{server.url}/healthz").status_code == 200) and server.process.pid
    status = open(f"/proc/{pid}/status").read()  # noqa: SIM115
    rss_before = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
    long_audio = helpers.audio_file("birdnet_soundscape_48k_30s.flac").read_bytes()
    bad = [
        b"",
        b"junk" * 1000,
        long_audio[: len(long_audio) // 2],
        helpers.audio_file("oss_empty_2c_44k1.wav").read_bytes(),
    ]

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
            uploads = [
                http.post("/query", files={"audio": ("long.flac", long_audio)}, data={"hop_s": "5"})
                for _ in range(16)
            ]
            junk = [http.post("/query", files={"audio": ("bad.bin", b)}) for b in bad * 4]
            return await asyncio.gather(*uploads, *junk)

    results = asyncio.run(main())
    assert [r.status_code for r in results[:16]] == [200] * 16
    assert all(r.status_code in (415, 422) for r in results[16:])
    status = open(f"/proc/{pid}/status").read()  # noqa: SIM115
    rss_after = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
    # decoded audio ≤ 64 MiB budget, one batch of 16 windows ≈ 31 MiB (+ its features), allocator slack
    assert rss_after - rss_before < 400 * 2**20, (rss_before, rss_after)
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_cli_query_prints_a_table_and_json(server, helpers):
    path = helpers.audio_file("birdnet_soundscape_48k_30s.flac")
    command = [
        sys.executable,
        "-m",
        "birdsearch.cli",
        "query",
        str(path),
        "--url",
        server.url,
        "--hop-s",
        "10",
    ]
    table = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert (
        "3 window(s) of 10 s" in table.stdout and "timeline:" in table.stdout and "index v000" in table.stdout
    )
    as_json = subprocess.run([*command, "--json", "-k", "2"], capture_output=True, text=True, timeout=120)
    body = json.loads(as_json.stdout)
    assert len(body["images"]) == 2 and body["query"]["windows"] == 3
    silent = subprocess.run(
        [sys.executable, "-m", "birdsearch.cli", "query", str(helpers.audio_file("oss_silence_10s_44k1.mp3")),
         "--url", server.url], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert silent.returncode == 2 and "422" in silent.stderr and "silent" in silent.stderr
    nobody = subprocess.run(
        [sys.executable, "-m", "birdsearch.cli", "query", str(path), "--url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert nobody.returncode == 2 and "birdsearch serve" in nobody.stderr


def test_hot_reload_under_load_fails_no_request(server, tmp_path, tiny_models, helpers):
    """A new version is published while 8 clients query without pause: every request succeeds.

    Runs last in this module: it moves the module's server to index v0002.
    """
    more = helpers.write_gallery(
        tmp_path / "gallery2", species=("Turdus migratorius", "Corvus corax", "Pica pica"), seed=7
    )
    path = helpers.audio_file("perch_21100_36_48_16k_10s.flac")
    data = path.read_bytes()
    stop = threading.Event()
    seen: list[tuple[int, str | None]] = []

    async def client(http):
        while not stop.is_set():
            r = await http.post("/query", files={"audio": (path.name, data)}, data={"k": "30"})
            seen.append(
                (r.status_code, r.json()["query"]["index"]["name"] if r.status_code == 200 else r.text)
            )

    async def load():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            await asyncio.gather(*(client(http) for _ in range(8)))

    loader = threading.Thread(target=lambda: asyncio.run(load()))
    loader.start()
    try:
        time.sleep(1.0)
        helpers.build_index(
            more, server.index_root, str(tiny_models["teacher"])
        )  # publishes v0002 under load
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(name == "v0002" for _, name in seen[-8:]):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        loader.join(timeout=120)
    species = httpx.get(f"{server.url}/species").json()
    failures = [s for s in seen if s[0] != 200]
    assert not failures, failures[:3]
    names = [name for _, name in seen]
    assert "v0001" in names and "v0002" in names
    swap = names.index("v0002")
    assert all(name == "v0002" for name in names[swap + 8 :])  # once swapped, never back
    assert species["index"] == "v0002" and "Corvus corax" in {s["species"] for s in species["species"]}


@pytest.mark.slow
def test_several_workers_share_one_metrics_page(index_root, server_env, helpers, tmp_path):
    """``--workers 2``: both answer, and /metrics (from either) counts the requests of both."""
    root = helpers.copy_index(index_root, tmp_path / "index")
    path = helpers.audio_file("perch_21100_36_48_16k_10s.flac")
    with helpers.Server(server_env(root), workers=2, log=tmp_path / "server.log") as running:

        async def main():
            async with httpx.AsyncClient(base_url=running.url, timeout=120) as http:
                files = {"audio": (path.name, path.read_bytes())}
                return await asyncio.gather(*(http.post("/query", files=files) for _ in range(16)))

        results = asyncio.run(main())
        pages = [httpx.get(f"{running.url}/metrics").text for _ in range(4)]
    assert [r.status_code for r in results] == [200] * 16
    for page in pages:  # whichever worker answers, the counts are the sum over both
        assert metric(page, "birdsearch_requests_total", 'method="POST",route="/query",status="200"') == 16
