"""The question the engine answers about one recording, and its answer (pydantic models).

The HTTP app serves these as they are (its form is ``Question`` plus the upload, ``POST /query``
answers a ``QueryResponse``, and the OpenAPI schema is generated from them); the Python API returns
the same ``QueryResponse``. A timeline window's species are views of the engine's per-window
detections (``birdsearch.engine.detections``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

QueryMode = Literal["auto", "distilled", "cascade", "classifier", "hybrid"]
AbstainReason = Literal["novel", "below_min_conf"]


class Question(BaseModel):
    """What to do with a recording: how many photos and species, windows, filters, mode, threshold
    (unknown fields: 422)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(
        12, ge=1, le=10_000, description="images to return (at most BIRDSEARCH_MAX_K)", examples=[12]
    )
    species_k: int = Field(
        5, ge=1, le=10_000, description="species in the ranking and in each timeline window", examples=[5]
    )
    window_s: float | None = Field(
        None,
        gt=0,
        description="window length in seconds (default and maximum: the model's, 10 s); shorter windows are "
        "repeat-padded to the model's length",
        examples=[10.0],
    )
    hop_s: float | None = Field(
        None,
        gt=0,
        description="seconds between window starts (default: window_s, no overlap)",
        examples=[5.0],
    )
    species: list[str] = Field(
        default_factory=list,
        description="only images of these species (scientific names; repeat the field or separate by commas)",
        examples=[["Turdus migratorius"]],
    )
    genus: str | None = Field(None, description="only images of this genus", examples=["Turdus"])
    family: str | None = Field(None, description="only images of this family", examples=["Turdidae"])
    order: str | None = Field(None, description="only images of this order", examples=["Passeriformes"])
    species_rule: str | None = Field(
        None,
        description="how a species' photos among each window's candidates pool into its score: 'best' (the "
        "best photo), 'mean-top:M', 'kth:Q' or 'lme:T' (log-mean-exp at temperature T); default: the server's "
        "BIRDSEARCH_SPECIES_RULE. Pooling keeps species with many gallery photos from winning for that alone",
        examples=["lme:0.1"],
    )
    species_list: str | None = Field(
        None,
        max_length=2**20,
        description="only these species: a species list's text, one species a line (scientific names, or BirdNET's "
        "'Scientific name_Common name' lines); wins over the server's BIRDSEARCH_SPECIES_LIST. A name the index "
        "lacks is a 422 suggesting the nearest names",
        examples=["Turdus migratorius\nCyanocitta cristata_Blue Jay"],
    )
    min_conf: float | None = Field(
        None,
        ge=0,
        le=1,
        description="keep only species whose calibrated confidence reaches this (0..1), in the ranking and in "
        "each window; nothing left says so (abstained). Default: the threshold chosen with the mode's open-set "
        "gate on validation recordings, else none. Needs a calibration for the mode (GET /version shows both)",
        examples=[0.5],
    )
    fmin_hz: float = Field(
        0.0,
        ge=0,
        description="band-pass each window before the model: lowest frequency kept, Hz (BirdNET-Analyzer's "
        "--fmin; an order-5 Butterworth magnitude, zero phase); 0: no high-pass",
        examples=[1000.0],
    )
    fmax_hz: float | None = Field(
        None,
        gt=0,
        description="highest frequency kept, Hz (BirdNET-Analyzer's --fmax), at most half the model's sample rate; "
        "null: no low-pass",
        examples=[8000.0],
    )
    include_abstained: bool = Field(
        False,
        description="also list the species of windows that abstained (novel audio, or none above min_conf) and "
        "of the recording when it abstains, each marked detected: false: the nearest species, not detections",
    )
    mode: QueryMode = Field(
        "auto",
        description="'distilled' (the distilled encoder), 'cascade' (zero-shot: the student classifies, the "
        "teacher's species embeddings query the images), 'classifier' (the encoder's species classifier on the "
        "student's audio, zero-shot for species it has no labelled audio of), 'hybrid' (the classifier for "
        "species with labelled audio, the distilled encoder for the others) or 'auto' (the encoder's recorded "
        "default, the mode its validation chose; the cascade without an encoder). GET /version lists the modes",
    )


class ImageHit(BaseModel):
    """One photo and how well it matches the recording."""

    id: int = Field(description="image id within the index version (see index.name)", examples=[42])
    url: str = Field(description="the photo", examples=["/images/42?h=5c1f0a9d2e7b4c3a"])
    thumbnail_url: str = Field(examples=["/images/42/thumbnail?h=5c1f0a9d2e7b4c3a"])
    species: str = Field(examples=["Turdus migratorius"])
    common_name: str = Field(examples=["American Robin"])
    score: float = Field(description="cosine similarity between recording and photo, -1..1", examples=[0.61])
    window: int = Field(description="the window whose search gave this score", examples=[0])
    license: str = Field(examples=["CC BY 4.0"])
    attribution: str = Field(examples=["(c) Jane Doe"])
    source: str = Field(description="where the photo came from", examples=["https://example.org/photos/42"])


class SpeciesHit(BaseModel):
    """One species, ranked by its best image over the recording."""

    species: str = Field(examples=["Turdus migratorius"])
    common_name: str = Field(examples=["American Robin"])
    genus: str = Field(examples=["Turdus"])
    family: str = Field(examples=["Turdidae"])
    order: str = Field(examples=["Passeriformes"])
    score: float = Field(description="best image score over all windows", examples=[0.61])
    confidence: float | None = Field(
        None,
        description="calibrated probability that the species calls in its best window (0..1); null without a "
        "calibration for the mode",
        examples=[0.87],
    )
    detected: bool = Field(
        True,
        description="false: listed only because include_abstained asked for it (below min_conf, or only in windows "
        "whose audio is unlike the recordings the model knows)",
    )
    windows: int = Field(description="windows in which this species ranks first", examples=[3])
    best_window: int = Field(description="the window of the best score", examples=[0])
    image_id: int = Field(description="its best-scoring photo", examples=[42])
    thumbnail_url: str = Field(examples=["/images/42/thumbnail?h=5c1f0a9d2e7b4c3a"])


class WindowSpecies(BaseModel):
    species: str = Field(examples=["Turdus migratorius"])
    common_name: str = Field(examples=["American Robin"])
    score: float = Field(examples=[0.61])
    confidence: float | None = Field(None, description="calibrated probability (0..1)", examples=[0.87])
    image_id: int | None = Field(None, description="the species' best photo in this window", examples=[42])
    image_score: float | None = Field(None, description="that photo's score for this window", examples=[0.58])
    image_license: str = Field("", examples=["CC BY 4.0"])
    image_attribution: str = Field("", examples=["(c) Jane Doe"])
    image_hash: str = Field("", description="the photo's content hash: its id in any index version",
                            examples=["5c1f0a9d2e7b4c3a"])  # fmt: skip
    species_code: str = Field("", description="the species' eBird code, where the index has it ('' otherwise)",
                              examples=["amerob"])  # fmt: skip
    detected: bool = Field(True, description="false: listed only because include_abstained asked for it")


class TimelineWindow(BaseModel):
    """The species heard in one window of the recording."""

    index: int = Field(examples=[0])
    start_s: float = Field(examples=[0.0])
    end_s: float = Field(examples=[10.0])
    species: list[WindowSpecies]
    abstained: bool = Field(
        False, description="this window names no species (its reason says why)", examples=[False]
    )
    reason: AbstainReason | None = Field(
        None,
        description="why it abstained: 'novel' (its audio is unlike the recordings the model knows: not in this "
        "gallery) or 'below_min_conf' (no species reached min_conf)",
        examples=[None],
    )
    novelty: float | None = Field(
        None,
        description="how unlike the recordings the model knows the window is (the mode's open-set signal; "
        "above the gate's threshold it is novel); null without a gate",
        examples=[0.12],
    )


class Aggregation(BaseModel):
    """How window results became the recording's answer."""

    window_species_score: str = Field(
        description="how a species' photos among a window's candidates pool into its window score (species rule)",
        examples=[
            "log-mean-exp at temperature 0.05 over the species' images among the window's candidates "
            "(species rule lme:0.05)"
        ],
    )
    recording_species_score: str = Field(examples=["max over windows"])
    species_windows: str = Field(examples=["number of windows in which the species ranks first"])
    recording_image_score: str = Field(examples=["max over windows"])
    candidates_per_window: int = Field(description="images searched per window", examples=[200])


class ModelInfo(BaseModel):
    mode: Literal["distilled", "cascade", "classifier", "hybrid"]
    id: str = Field(
        description="the model's spec as given (hf-hub:org/repo, toy), or its directory's base name",
        examples=["distilled-ssw60", "hf-hub:davidrrobinson/BioLingual"],
    )
    dim: int = Field(examples=[768])


class IndexInfo(BaseModel):
    name: str = Field(description="the index version that answered", examples=["v0007"])
    count: int = Field(description="images in it", examples=[120000])
    dim: int = Field(examples=[768])
    species: int = Field(examples=[1450])
    index_type: str = Field(examples=["Flat"])
    teacher: str = Field(examples=["hf-hub:imageomics/bioclip-2"])
    created: str = Field(examples=["2026-11-26T22:50:00+00:00"])
    recall: dict[str, float] = Field(
        default_factory=dict,
        description="recall@10 of the approximate index against exact search, per query kind: species_text "
        "and audio (tuned on), self (the gallery's own photos); empty for an exact index",
        examples=[{"species_text": 0.962, "self": 0.981}],
    )


class QueryFacts(BaseModel):
    """What the server made of the upload, and how long each stage took."""

    duration_s: float = Field(description="length of the decoded recording", examples=[23.4])
    sample_rate: int = Field(description="rate the model heard", examples=[48000])
    source_sample_rate: int = Field(examples=[44100])
    source_channels: int = Field(examples=[2])
    source_format: str = Field(examples=["MP3/MPEG_LAYER_III"])
    windows: int = Field(examples=[3])
    window_s: float = Field(examples=[10.0])
    hop_s: float = Field(examples=[10.0])
    padded: bool = Field(description="shorter than one window, so repeat-padded", examples=[False])
    filtered_images: int | None = Field(None, description="images left by the taxon filters", examples=[None])
    model: ModelInfo
    index: IndexInfo
    timings_ms: dict[str, float] = Field(
        description="decode, embed (queueing + features + encoder), search, total",
        examples=[{"decode": 6.1, "embed": 41.0, "search": 1.2, "total": 49.8}],
    )


class QueryResponse(BaseModel):
    """Species and photos for a recording."""

    species: list[SpeciesHit] = Field(description="species ranking over the whole recording, best first")
    images: list[ImageHit] = Field(description="the best photos over the whole recording, best first")
    timeline: list[TimelineWindow] = Field(description="one entry per window (one for a short recording)")
    aggregation: Aggregation
    query: QueryFacts
    min_conf: float | None = Field(None, description="the threshold applied (null: none)", examples=[0.5])
    abstained: bool = Field(
        False,
        description="no window names a species: the recording names none (reason says why)",
        examples=[False],
    )
    reason: AbstainReason | None = Field(
        None,
        description="why the recording abstained: 'novel' when every window is unlike the recordings the model "
        "knows (not in this gallery), else 'below_min_conf'",
        examples=[None],
    )
    message: str | None = Field(None, examples=["no species reached the confidence threshold of 0.5"])
