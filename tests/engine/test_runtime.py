"""The runtime's use of the cores: model calls get the cores that no other query keeps busy."""

from __future__ import annotations

import asyncio

import pytest
import torch

from birdsearch.engine.cpu_share import RecentLoad


@pytest.fixture
def runtime_on_cores(settings_for, monkeypatch):
    """``make(cores, **settings)``: a Runtime on a machine of ``cores`` cores, with its compute thread."""
    from birdsearch.engine.runtime import Runtime

    made = []

    def make(cores: int, **overrides):
        monkeypatch.setattr("birdsearch.service.settings.available_cpus", lambda: cores)
        runtime = Runtime(settings_for(**overrides).engine_config())
        runtime.compute.start()
        made.append(runtime)
        return runtime

    threads = torch.get_num_threads()
    yield make
    for runtime in made:
        runtime.compute.shutdown()
    torch.set_num_threads(threads)  # MKL's count is process-wide


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def steady(runtime, active: int, computing: int) -> None:
    """The runtime's queries at these counts for long enough that the recent average equals them."""
    clock = Clock()
    runtime.compute.load = RecentLoad(horizon_s=0.5, clock=clock)
    runtime.compute.load.change(active=active, computing=computing)
    clock.now = 60.0


def threads_of_next_model_call(runtime) -> int:
    return asyncio.run(runtime.compute.run(torch.get_num_threads))


def test_a_lone_query_gets_every_core(runtime_on_cores):
    runtime = runtime_on_cores(4, decode_threads=2)
    steady(runtime, active=1, computing=1)
    assert threads_of_next_model_call(runtime) == 4


def test_queries_working_elsewhere_take_their_cores_from_the_model(runtime_on_cores):
    runtime = runtime_on_cores(4, decode_threads=2)
    steady(runtime, active=3, computing=1)  # two queries decode while a batch runs
    assert threads_of_next_model_call(runtime) == 2
    steady(runtime, active=30, computing=1)  # at most the decode threads and the event loop are busy
    assert threads_of_next_model_call(runtime) == 1
    steady(runtime, active=30, computing=30)  # all of them wait on the model: the cores are free
    assert threads_of_next_model_call(runtime) == 4


def test_a_burst_of_decoding_as_a_long_batch_starts_leaves_it_every_core(runtime_on_cores):
    """Clients answered by one batch send their next clips as the next batch starts; decoding them
    takes milliseconds of a batch that runs for hundreds."""
    runtime = runtime_on_cores(2, decode_threads=2)
    steady(runtime, active=4, computing=4)
    runtime.compute.load.clock.now += 0.01
    runtime.compute.load.change(active=+4)  # four new uploads start decoding now
    assert threads_of_next_model_call(runtime) == 2
    runtime.compute.load.clock.now += 2.0  # ...and if they kept the cores busy for a while, they get them
    assert threads_of_next_model_call(runtime) == 1


def test_never_fewer_than_one_thread_and_the_setting_wins(runtime_on_cores):
    runtime = runtime_on_cores(2, decode_threads=8)
    steady(runtime, active=9, computing=0)
    assert threads_of_next_model_call(runtime) == 1
    pinned = runtime_on_cores(2, decode_threads=8, compute_threads=3)
    steady(pinned, active=9, computing=0)
    assert threads_of_next_model_call(pinned) == 3


def test_workers_split_the_cores(runtime_on_cores):
    runtime = runtime_on_cores(8, decode_threads=1, workers=2)
    steady(runtime, active=1, computing=1)
    assert threads_of_next_model_call(runtime) == 4


def test_the_counts_return_to_zero_after_answers_and_refusals(api, helpers):
    """A count left behind would starve every later model call of cores."""
    good = helpers.audio_file("perch_21100_36_48_16k_10s.flac")
    silent = helpers.audio_file("oss_silence_10s_44k1.mp3")

    async def main():
        async with api() as (app, client):
            runtime = app.state.runtime
            answers = await asyncio.gather(
                *(
                    client.post("/query", files={"audio": (p.name, p.read_bytes())})
                    for p in (good, silent) * 3
                ),
                client.post("/query", files={"audio": ("x.wav", b"not audio")}),
            )
            return [r.status_code for r in answers], (
                runtime.compute.load.active,
                runtime.compute.load.computing,
            )

    codes, counts = helpers.run(main())
    assert codes == [200, 422] * 3 + [415]
    assert counts == (0, 0)


def test_the_counts_return_to_zero_when_the_search_fails(api, helpers, monkeypatch):
    from birdsearch.engine import answer

    def broken(*args, **kwargs):
        raise RuntimeError("search broke")

    monkeypatch.setattr(answer, "search_and_rank", broken)
    good = helpers.audio_file("perch_21100_36_48_16k_10s.flac")

    async def main():
        async with api() as (app, client):
            r = await client.post("/query", files={"audio": (good.name, good.read_bytes())})
            return r.status_code, (
                app.state.runtime.compute.load.active,
                app.state.runtime.compute.load.computing,
            )

    status, counts = helpers.run(main())
    assert status == 500
    assert counts == (0, 0)
