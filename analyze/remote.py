"""``analyze --url``: the recordings go to a running query service instead of models loaded here.

Each recording is uploaded to ``POST /query`` (``birdsearch.client.query_file``), a few at a time;
the answer's per-window timeline, whose species carry their best photo of that window, is read back
into the engine's detections (``birdsearch.engine.detections.from_timeline``): those an in-process
run writes. What decides them on the server is sent with each upload:
mode, window and hop, species_k, the species rule and the species list (resolved once against
``GET /species``, so that a typo stops the run before any upload).

``min_conf`` is applied here, to each window species' confidence (its raw score when the server has
no calibration for the mode), exactly as the in-process run does: sent to the server it would be
refused by a server without a calibration, where analyze's rule is to fall back to the raw score.
So every window's species are asked for (``include_abstained``); a window the server's gate calls
novel gives no detection, and without ``--min-conf`` the server's default (``min_conf`` in its
answer, chosen with its gate) applies, else ``DEFAULT_MIN_CONF``.
The server's own limits (upload size, duration, windows) and its ``candidates_per_window`` apply.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from birdsearch.engine.batch import DEFAULT_MIN_CONF
from birdsearch.engine.detections import RecordingResult, confident, from_timeline
from birdsearch.engine.inputs import Recording
from birdsearch.engine.ranking import parse_rule
from birdsearch.errors import BirdsearchError
from birdsearch.model.mel import FrontEndConfig

log = logging.getLogger(__name__)

DEFAULT_UPLOADS = 4  # uploads in flight when --workers is 0: enough to keep a server's batcher fed
UPLOAD_TIMEOUT_S = 600.0  # an hour of audio on a busy CPU server takes minutes


class RemoteAnalyser:
    """Recordings in, each one's result (or error) out, through a query service at ``config.url``."""

    def __init__(self, config: Any):  # config: birdsearch.analyze.config.AnalyzeConfig
        from birdsearch import client

        self.config = config
        self.url = config.url.rstrip("/")
        self.workers = config.workers or DEFAULT_UPLOADS
        version = client.get_json("version", self.url)  # a ServiceError here stops the run: no server
        self.mode = version["default_mode"] if config.mode == "auto" else config.mode
        if self.mode not in version["models"]:
            raise client.ServiceError(f"mode {self.mode!r} is not served at {self.url} (it serves "
                                      f"{', '.join(sorted(version['models']))}): choose one with --mode")  # fmt: skip
        self.species_list = (
            client.resolve_list(config.species_list, self.url, strict=config.strict_species_list)
            if config.species_list is not None else None
        )  # fmt: skip
        hop_s = config.hop_s
        if config.overlap_s is not None:  # BirdNET's overlap; the server's default window is the model's
            hop_s = (config.window_s or FrontEndConfig().window_s) - config.overlap_s
        self.form = {
            "mode": self.mode, "window_s": config.window_s, "hop_s": hop_s, "species_k": config.species_k,
            "k": 1, "species_rule": config.species_rule, "species_list": self.species_list,
            "fmin_hz": config.fmin_hz or None, "fmax_hz": config.fmax_hz,
            "include_abstained": True,  # every window's species: min_conf is applied here, novel windows dropped
        }  # fmt: skip
        self.settings = {
            "runner": "url",
            "url": self.url,
            "mode": self.mode,
            "model": version["models"][self.mode],
            "index": (version.get("index") or {}).get("name"),
            "window_s": config.window_s,  # None: the server's (the model's window)
            "hop_s": hop_s,
            "min_conf": config.min_conf,
            "species_k": config.species_k,
            "species_rule": str(parse_rule(config.species_rule)),
            "species_list": self.species_list.splitlines() if self.species_list is not None else None,
            "band_hz": [config.fmin_hz, config.fmax_hz],
        }
        self.seconds = {"upload": 0.0}  # summed over the uploads in flight
        self.uploads = 0
        self.uncalibrated_warned = False
        self.lock = threading.Lock()

    def facts(self) -> dict[str, Any]:
        return {"url": self.url, "uploads_in_flight": self.workers, "uploads": self.uploads}

    def query(self, recording: Recording) -> dict[str, Any]:
        """One upload (on a pool thread): the server's answer."""
        from birdsearch.client import query_file

        started = time.perf_counter()
        try:
            return query_file(recording.path, self.url, UPLOAD_TIMEOUT_S, **self.form)
        finally:
            with self.lock:
                self.seconds["upload"] += time.perf_counter() - started
                self.uploads += 1

    def run(self, todo: Sequence[Recording]) -> Iterator[tuple[Recording, RecordingResult | BaseException]]:
        """Each recording with its result or its error, in order, ``workers`` uploads in flight."""
        from birdsearch.engine.batch import read_ahead

        with ThreadPoolExecutor(self.workers, thread_name_prefix="birdsearch-analyze-upload") as pool:
            for recording, outcome in read_ahead(pool, self.query, todo, ahead=self.workers):
                if isinstance(outcome, BaseException):
                    yield recording, outcome
                    continue
                try:
                    yield recording, self.result(recording, outcome)
                except (KeyError, TypeError, ValueError) as e:  # an answer of another shape: this file fails
                    yield recording, AnswerError(f"{recording.path}: the server's answer lacks {e}: "
                                                 "upgrade the server to this version of birdsearch")  # fmt: skip

    def result(self, recording: Recording, answer: dict[str, Any]) -> RecordingResult:
        facts = answer["query"]
        index = facts["index"]["name"]
        if index != self.settings["index"]:
            log.warning("%s was answered by index %s, the run started with %s", recording.path, index,
                        self.settings["index"])  # fmt: skip
        min_conf = self.config.min_conf if self.config.min_conf is not None else answer.get("min_conf")
        min_conf = DEFAULT_MIN_CONF if min_conf is None else min_conf
        heard = [window for window in answer["timeline"] if window.get("reason") != "novel"]
        detections = confident(from_timeline(heard), min_conf)
        if not self.uncalibrated_warned and any(s.get("confidence") is None for w in answer["timeline"]
                                                for s in w["species"]):  # fmt: skip
            self.uncalibrated_warned = True
            log.warning("the server has no calibration for mode %s: --min-conf %g applies to the raw pooled "
                        "cosine score", self.mode, min_conf)  # fmt: skip
        front_end = FrontEndConfig()  # the model's band is not in the answer: the front end's default
        low = max(front_end.f_min, self.config.fmin_hz)
        high = min(front_end.f_max, self.config.fmax_hz or front_end.f_max)
        return RecordingResult(str(recording.path), float(facts["duration_s"]), int(facts["source_sample_rate"]),
                               detections, low, high)  # fmt: skip


class AnswerError(BirdsearchError):
    """The server's answer does not have the fields analyze needs."""

    code = "bad_answer"
