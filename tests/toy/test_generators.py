"""The world itself: names, photos and calls that carry their species, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from birdsearch.model.mel import FrontEndConfig, LogMel
from birdsearch.toy.calls import SAMPLE_RATE, NoiseBank, recording, soundscape
from birdsearch.toy.config import WorldConfig, small_config
from birdsearch.toy.images import draw_photo
from birdsearch.toy.taxonomy import COLOURS, PARTS, make_species


def test_taxonomy_shape_and_names():
    species = make_species(WorldConfig())
    assert len(species) == 24
    assert len({sp.scientific for sp in species}) == 24
    assert len({sp.common for sp in species}) == 24
    orders = {sp.taxon.order for sp in species}
    families = {sp.taxon.family for sp in species}
    genera = {sp.taxon.genus for sp in species}
    assert (len(orders), len(families), len(genera)) == (3, 6, 12)
    assert all(o.endswith("iformes") for o in orders) and all(f.endswith("idae") for f in families)
    colours, parts = {c for c, _, _ in COLOURS}, {p for p, _ in PARTS}
    for sp in species:
        genus, epithet = sp.scientific.split()
        assert genus[0].isupper() and epithet.islower()
        mark, group = sp.common.split(" ", 1)
        colour, part = mark.split("-")
        # The name says what the drawing shows.
        assert colour in colours and part in parts and group == sp.group
        assert part == sp.plumage.mark_part
        assert sp.plumage.mark == next(rgb for c, rgb, _ in COLOURS if c == colour)
    # Siblings share a call type and body colour, and differ in pitch.
    for genus in genera:
        siblings = [sp for sp in species if sp.taxon.genus == genus]
        assert len({sp.song.call_type for sp in siblings}) == 1
        assert len({sp.plumage.body for sp in siblings}) == 1
        assert len({round(sp.song.f0) for sp in siblings}) == len(siblings)


def test_taxonomy_is_deterministic_and_seeded():
    assert make_species(WorldConfig(seed=3)) == make_species(WorldConfig(seed=3))
    assert [sp.scientific for sp in make_species(WorldConfig(seed=3))] != [
        sp.scientific for sp in make_species(WorldConfig(seed=4))
    ]


def nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """Leave-one-out nearest-centroid accuracy, and mean within/between-species cosine similarity."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = unit @ unit.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    within, between = sims[same & off_diagonal].mean(), sims[~same].mean()
    correct = 0
    for i in range(len(labels)):
        keep = np.arange(len(labels)) != i
        classes = np.unique(labels)
        centroids = np.stack([features[keep & (labels == c)].mean(axis=0) for c in classes])
        distance = np.linalg.norm(centroids - features[i], axis=1)
        correct += classes[distance.argmin()] == labels[i]
    return correct / len(labels), float(within), float(between)


def test_photos_of_a_species_resemble_each_other_more_than_others():
    species = make_species(small_config())
    features, labels = [], []
    for sp in species:
        for i in range(6):
            photo = np.asarray(draw_photo(sp, np.random.default_rng([5, sp.label, i]), 96), dtype=np.float32)
            # A colour histogram (6 levels per channel) of the middle, where the bird is; the
            # scene varies freely, so this crude feature only has to beat chance clearly.
            levels = (photo[24:72, 24:72] // (256 / 6)).astype(int)
            codes = (levels[..., 0] * 6 + levels[..., 1]) * 6 + levels[..., 2]
            features.append(np.sqrt(np.bincount(codes.ravel(), minlength=216) / codes.size))
            labels.append(sp.label)
    accuracy, within, between = nearest_centroid_accuracy(np.array(features), np.array(labels))
    assert within > between + 0.05, (within, between)
    assert accuracy > 2.5 / len(species), accuracy  # chance is 1/8


def call_features(samples: np.ndarray) -> np.ndarray:
    """Per mel bin: how far the loud frames rise above the median (where the calls are)."""
    mel = LogMel(FrontEndConfig())(torch.from_numpy(samples[None]))[0, 0]
    quantiles = torch.quantile(mel, torch.tensor([0.5, 0.95]), dim=0)
    return (quantiles[1] - quantiles[0]).numpy()


def test_calls_of_a_species_resemble_each_other_more_than_others():
    species = make_species(small_config())
    noise = NoiseBank(0, length=1 << 19)
    features, labels = [], []
    for sp in species:
        for i in range(4):
            samples = recording(sp.song, 4.0, np.random.default_rng([6, sp.label, i]), noise)
            features.append(call_features(samples))
            labels.append(sp.label)
    accuracy, within, between = nearest_centroid_accuracy(np.array(features), np.array(labels))
    assert within > between
    assert accuracy > 0.75, accuracy


def test_recordings_vary_but_stay_in_range():
    sp = make_species(small_config())[0]
    noise = NoiseBank(0, length=1 << 19)
    a = recording(sp.song, 3.0, np.random.default_rng(1), noise)
    b = recording(sp.song, 3.0, np.random.default_rng(2), noise)
    assert a.dtype == np.float32 and len(a) == 3 * SAMPLE_RATE
    assert np.abs(a).max() <= 1.0 and np.abs(a).max() > 0.2
    assert not np.allclose(a, b)


def test_soundscape_events_are_where_the_calls_are():
    species = make_species(small_config())[:3]
    mixture, events = soundscape([sp.song for sp in species], 30.0, np.random.default_rng(3), NoiseBank(1))
    assert len(mixture) == 30 * SAMPLE_RATE
    assert {index for index, _ in events} == {0, 1, 2}
    frames = np.abs(mixture).reshape(-1, SAMPLE_RATE // 10).max(axis=1)  # 100 ms peaks
    for _, event in events:
        assert 0 <= event.start_s < event.end_s <= 30.0
        inside = frames[int(event.start_s * 10) : int(np.ceil(event.end_s * 10))]
        assert inside.max() > np.median(frames)


@pytest.mark.parametrize("n_species", [0, 10_000])
def test_bad_world_shapes_are_refused(n_species):
    from birdsearch.errors import ConfigError

    with pytest.raises(ConfigError):
        config = WorldConfig(orders=n_species)
        make_species(config)
