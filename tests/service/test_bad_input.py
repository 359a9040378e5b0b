"""Every bad input of the issue, in-process: the right status and code, and the server unharmed."""

import pytest

FOCAL = "perch_21100_36_48_16k_10s.flac"
BOUNDARY = "birdsearch-test-boundary"


def multipart_head(filename: str = "big.wav") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="audio"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


class CountingBody:
    """An async multipart body of ``total`` bytes in 64 KiB chunks, counting what the server pulled."""

    def __init__(self, total: int):
        self.total = total
        self.sent = 0

    async def __aiter__(self):
        head = multipart_head()
        self.sent += len(head)
        yield head
        chunk = b"\0" * 65536
        while self.sent < self.total:
            self.sent += len(chunk)
            yield chunk
        yield f"\r\n--{BOUNDARY}--\r\n".encode()


async def post_bytes(client, data: bytes, name: str = "upload.bin", **form):
    return await client.post("/query", files={"audio": (name, data)}, data=form)


async def still_serving(client, helpers) -> int:
    data = helpers.audio_file(FOCAL).read_bytes()
    return (await post_bytes(client, data)).status_code


@pytest.mark.parametrize(
    ("name", "status", "code", "message"),
    [
        ("oss_empty_2c_44k1.wav", 422, "empty_audio", "no samples"),
        ("oss_stereo_float_44k1_tiny.wav", 422, "empty_audio", "5 frames"),
        ("oss_silence_10s_44k1.mp3", 422, "silent_audio", "silent"),
    ],
)
def test_real_edge_case_recordings_are_refused_by_name(api, helpers, name, status, code, message):
    async def main():
        async with api() as (_, client):
            r = await post_bytes(client, helpers.audio_file(name).read_bytes(), name)
            return r, await still_serving(client, helpers)

    r, after = helpers.run(main())
    assert (r.status_code, r.json()["code"]) == (status, code)
    assert message in r.json()["detail"]
    assert after == 200


def test_a_very_short_recording_is_padded_and_answered(api, helpers):
    async def main():
        async with api() as (_, client):
            return await post_bytes(client, helpers.audio_file("oss_veryshort_44k1_0.14s.wav").read_bytes())

    r = helpers.run(main())
    assert r.status_code == 200
    q = r.json()["query"]
    assert q["padded"] is True and q["windows"] == 1 and q["duration_s"] == pytest.approx(0.142, abs=1e-3)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda audio: b"%PDF-1.7 this is not a recording" * 50, 415, "unsupported_audio"),
        (lambda audio: b"", 415, "unsupported_audio"),
        (lambda audio: bytes(range(256)) * 40, 415, "unsupported_audio"),
        (lambda audio: audio[: len(audio) // 2], 422, "corrupt_audio"),  # truncated FLAC
    ],
    ids=["pdf-bytes", "zero-bytes", "noise-bytes", "truncated-flac"],
)
def test_non_audio_and_truncated_uploads(api, helpers, make, status, code):
    async def main():
        async with api() as (_, client):
            r = await post_bytes(client, make(helpers.audio_file(FOCAL).read_bytes()))
            return r, await still_serving(client, helpers)

    r, after = helpers.run(main())
    assert (r.status_code, r.json()["code"]) == (status, code), r.text
    assert after == 200


def test_truncated_mp3_is_corrupt(api, helpers):
    data = helpers.audio_file("derived_spinetail_stereo_44k1.mp3").read_bytes()

    async def main():
        async with api() as (_, client):
            return await post_bytes(client, data[: len(data) // 3], "spinetail.mp3")

    r = helpers.run(main())
    assert (r.status_code, r.json()["code"]) == (422, "corrupt_audio")
    assert "truncated" in r.json()["detail"]


def test_too_long_recording_is_413_before_decoding(api, helpers):
    async def main():
        async with api(max_duration_s=5) as (_, client):
            return await post_bytes(client, helpers.audio_file(FOCAL).read_bytes())

    r = helpers.run(main())
    assert (r.status_code, r.json()["code"]) == (413, "audio_too_long")
    assert "longer than the 5 s limit" in r.json()["detail"]


def test_upload_decoding_beyond_the_memory_cap_is_413(api, helpers):
    async def main():
        async with api(max_decoded_bytes=2**20) as (_, client):  # 10 s at 16 kHz needs ~2.6 MiB
            return await post_bytes(client, helpers.audio_file(FOCAL).read_bytes())

    r = helpers.run(main())
    assert (r.status_code, r.json()["code"]) == (413, "audio_too_long")
    assert "BIRDSEARCH_MAX_DECODED_BYTES" in r.json()["detail"]


def test_declared_oversize_upload_is_refused_before_reading_its_body(api, helpers):
    body = CountingBody(total=10 * 2**20)

    async def main():
        async with api(max_upload_bytes=2**20) as (_, client):
            headers = {
                "content-type": f"multipart/form-data; boundary={BOUNDARY}",
                "content-length": str(10 * 2**20),
            }
            r = await client.post("/query", content=body, headers=headers)
            return r, await still_serving(client, helpers)

    r, after = helpers.run(main())
    assert (r.status_code, r.json()["code"]) == (413, "upload_too_large")
    assert "10485760 bytes is larger than the 1048576-byte limit" in r.json()["detail"]
    assert body.sent == 0  # not a byte of the body was pulled
    assert after == 200


def test_streamed_oversize_upload_is_refused_while_it_streams(api, helpers):
    body = CountingBody(total=50 * 2**20)

    async def main():
        async with api(max_upload_bytes=2**20) as (_, client):
            headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}  # no length: chunked
            r = await client.post("/query", content=body, headers=headers)
            return r, await still_serving(client, helpers)

    r, after = helpers.run(main())
    assert (r.status_code, r.json()["code"]) == (413, "upload_too_large")
    assert body.sent < 2**20 + 3 * 65536  # it stopped reading just past the limit, not at 50 MiB
    assert after == 200


@pytest.mark.parametrize(
    ("form", "fragment"),
    [
        ({"k": "0"}, "k"),
        ({"k": "101"}, "k=101 is above the limit of 100"),
        ({"k": "many"}, "k"),
        ({"species_k": "51"}, "species_k=51 is above the limit of 50"),
        ({"hop_s": "0.25"}, "hop_s=0.25 is below the minimum"),
        ({"hop_s": "-1"}, "hop_s"),
        ({"window_s": "20"}, "window_s=20 must be between 1 and the model's window of 10 s"),
        ({"mode": "loudest"}, "mode"),
        ({"top_k": "5"}, "top_k"),
        ({"species": "Dodo ineptus"}, "'Dodo ineptus' is not in index"),
        ({"order": "Dinosauria"}, "'Dinosauria' is not in index"),
    ],
)
def test_bad_parameters_are_422_naming_them(api, helpers, form, fragment):
    async def main():
        async with api() as (_, client):
            return await post_bytes(client, helpers.audio_file(FOCAL).read_bytes(), **form)

    r = helpers.run(main())
    assert r.status_code == 422 and r.json()["code"] == "bad_parameter"
    assert fragment in str(r.json()["detail"])


def test_too_many_windows_is_422(api, helpers):
    async def main():
        async with api(max_windows=3) as (_, client):
            return await post_bytes(
                client, helpers.audio_file("birdnet_soundscape_48k_30s.flac").read_bytes(), hop_s="2"
            )

    r = helpers.run(main())
    assert r.status_code == 422 and "BIRDSEARCH_MAX_WINDOWS" in r.json()["detail"]


def test_missing_audio_field_is_422(api, helpers):
    async def main():
        async with api() as (_, client):
            return await client.post("/query", data={"k": "3"}, files={"other": ("x", b"123")})

    r = helpers.run(main())
    assert r.status_code == 422 and "audio" in str(r.json()["detail"])


@pytest.mark.parametrize(
    "path",
    [
        "/images/999999",
        "/images/abc",
        "/images/-1",
        "/images/1.0",
        "/images/0?h=zzzz",
        "/images/0?h=" + "0" * 64,
        "/images/0/thumbnail?h=" + "f" * 64,
        "/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/images/..%2F..%2Fsettings.py",
        "/images/0/../../etc/passwd",
        "/static/../settings.py",
        "/static/%2e%2e/settings.py",
        "/static/..%2Fsettings.py",
        "/nowhere",
    ],
)
def test_unknown_images_and_path_tricks_are_404(api, helpers, path):
    async def main():
        async with api() as (_, client):
            return await client.get(path)

    r = helpers.run(main())
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert "settings" not in r.text.lower() or r.json().get("code") == "not_found"
