"""The toy student: a small ``transformers.ClapModel`` trained on recordings and "Sound of a {name}".

It eats exactly what BioLingual eats (48 kHz, 10 s windows, 64 log-mel bins from ``MelFrontEnd``),
has its own byte-level BPE tokenizer, and is saved in the transformers format, so that
``Student.load`` cannot tell it from BioLingual except by size.

Two text sides, to mirror BioLingual's weakness honestly (its zero-shot species accuracy is low for
many species):

- ``perfect``: every recording is captioned with its species' common name;
- ``realistic`` (the default ``toy`` student): only ``caption_fraction`` of the species are ever
  named; a share ``caption_noise`` of their recordings carry a sibling's name; the recordings of
  the other species are captioned "Sound of a {group}" ("Sound of a Warbler") or "Sound of a bird".
  Its audio tower hears every species; its text side cannot name half of them.
- ``own-captions`` (the study's, ``birdsearch.toy.study``; never a world's default): realistic on
  both sides. Its audio tower, too, learns only from the realistic captions, missing and swapped
  names included, so no part of it has seen a label the captions do not give.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from birdsearch.model.audio import load, random_crop
from birdsearch.model.mel import FrontEndConfig, MelFrontEnd
from birdsearch.model.standins import BIOLINGUAL_FEATURES, build_student, save_student, train_bpe_tokenizer
from birdsearch.model.student import PROMPT, encode_audio
from birdsearch.toy.config import StudentTrainConfig
from birdsearch.toy.shipped import round_to_half
from birdsearch.toy.taxonomy import COLOURS, PARTS, ToySpecies
from birdsearch.toy.training import batches, class_contrastive_loss, optimizer_for, warmup_cosine

# Annotations only: the world imports the builders, so a runtime import would close a circle.
if TYPE_CHECKING:
    from birdsearch.toy.world import ToyWorld

log = logging.getLogger(__name__)

OWN_CAPTIONS = "own-captions"  # the student realistic on both sides (see the module docstring)
MAX_TEXT_TOKENS = 64  # captions are short; RoBERTa-style position table = this + 2


def student_clap_config(sc: StudentTrainConfig) -> Any:
    """A small ``ClapConfig``: HTSAT with BioLingual's 64-mel, 10 s input; a small RoBERTa-style text tower."""
    from transformers import ClapConfig

    stages = len(sc.audio_depths)
    audio = {
        "patch_size": sc.patch_size,
        "patch_stride": [sc.patch_size, sc.patch_size],
        "patch_embeds_hidden_size": sc.audio_hidden,
        "hidden_size": sc.audio_hidden * 2 ** (stages - 1),  # HTSAT doubles its width per stage
        "depths": list(sc.audio_depths),
        "num_attention_heads": list(sc.audio_heads),
        "window_size": 8,
        "num_mel_bins": BIOLINGUAL_FEATURES["feature_size"],
        "hidden_dropout_prob": 0.0,  # a few hundred steps do not overfit; dropout only costs time
        "spec_size": 256,  # the smallest that folds 1001 frames x 64 mels (BioLingual's too)
        "projection_dim": sc.projection_dim,
    }
    text = {
        "vocab_size": sc.vocab_size,
        "hidden_size": sc.text_hidden,
        "intermediate_size": 4 * sc.text_hidden,
        "num_hidden_layers": sc.text_layers,
        "num_attention_heads": max(1, sc.text_hidden // 32),
        "max_position_embeddings": MAX_TEXT_TOKENS + 2,
        "projection_dim": sc.projection_dim,
    }
    return ClapConfig(
        audio_config=audio,
        text_config=text,
        projection_dim=sc.projection_dim,
        initializer_factor=sc.init_factor,
    )


def caption(name: str) -> str:
    return PROMPT.format(name)


def recording_captions(
    world: ToyWorld, variant: str, species: list[ToySpecies], rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """The caption of each training recording (of ``species[i]``), and the species whose names were used."""
    if variant == "perfect":
        return [caption(sp.common) for sp in species], [sp.scientific for sp in world.species]
    n_named = max(1, round(world.config.caption_fraction * len(world.species)))
    named = {world.species[i].scientific for i in rng.permutation(len(world.species))[:n_named]}
    captions = []
    for sp in species:
        if sp.scientific not in named:
            captions.append(caption(sp.group if rng.random() < 0.5 else "bird"))
        elif rng.random() < world.config.caption_noise:
            captions.append(caption(str(rng.choice(sibling_names(world, sp)))))
        else:
            captions.append(caption(sp.common))
    return captions, sorted(named)


def sibling_names(world: ToyWorld, species: ToySpecies) -> list[str]:
    """Common names of the other species of its genus (of any other species, for a lone one)."""
    same_genus = [
        sp.common for sp in world.species if sp.taxon.genus == species.taxon.genus and sp != species
    ]
    return same_genus or [sp.common for sp in world.species if sp != species]


def tokenizer_corpus(world: ToyWorld) -> list[str]:
    """Texts the BPE tokenizer is trained on: general vocabulary, not the training captions.

    A real tokenizer (RoBERTa's) knows English words whether or not the model ever heard a
    species' name; so this one learns every colour, part and group word and every common name.
    """
    words = [caption(sp.common) for sp in world.species] + [caption(sp.group) for sp in world.species]
    words += [caption(f"{c}-{p} bird") for c, _, _ in COLOURS for p, _ in PARTS] + [caption("bird")]
    return words


def training_windows(
    world: ToyWorld, front_end: FrontEndConfig, rng: np.random.Generator, progress: bool
) -> tuple[torch.Tensor, list[ToySpecies]]:
    """Log-mel features (float16) of random 10 s crops of every student-training recording."""
    mel = MelFrontEnd(front_end, "cpu")
    by_name = {sp.scientific: sp for sp in world.species}
    rows = world.read_manifest(world.student_manifest)
    crops = world.config.student.crops_per_recording
    features, species = [], []
    for row in tqdm(rows, desc="toy student features", unit="rec", disable=not progress):
        samples = load(row["path"], sample_rate=front_end.sample_rate).samples
        windows = np.stack([random_crop(samples, front_end.window_samples, rng) for _ in range(crops)])
        features.append(mel(windows).half())
        species += [by_name[row["species"]]] * crops
    return torch.cat(features), species


def train_student(
    world: ToyWorld, variant: str, progress: bool = True, directory: Path | None = None
) -> dict[str, Any]:
    """Train one toy student variant and save it to ``directory`` (default ``world.student_dir_for(variant)``).

    Two contrastive phases, because a text tower learning from scratch at the same time as the
    audio tower starves it of signal (24 captions start out nearly identical), and the CPU budget
    allows a few hundred steps:

    1. (perfect only) the audio tower against a learnable table of caption embeddings, one per
       species' name: InfoNCE against free class vectors, which learns in a few hundred steps;
    2. a fresh text tower against the locked audio embeddings (as LiT locks an image tower), on the
       variant's captions. "realistic" reuses the perfect student's audio tower: the two students
       hear alike and differ only in what they can name, which is the difference the cascade and
       the distilled encoder are compared on. "own-captions" trains its audio tower in phase 1
       too, against one learnable vector per distinct caption instead of per species.
    """
    from transformers import ClapModel

    sc = world.config.student
    features, species = training_windows(
        world, FRONT_END, np.random.default_rng([world.config.seed, 42]), progress
    )
    facts: dict[str, Any] = {}
    if variant == "perfect":
        model = build_student(student_clap_config(sc), seed=world.config.seed)
        facts["audio_loss"] = train_audio_tower(world, model, features, species, progress)
    distinct, targets, named = prepared_captions(world, variant, species)
    if variant == OWN_CAPTIONS:
        model = build_student(student_clap_config(sc), seed=world.config.seed)
        facts["audio_loss"] = train_audio_tower(world, model, features, species, progress, targets)
    elif variant != "perfect":
        model = ClapModel.from_pretrained(world.student_dir_for("perfect"))
    audio = embed_features(model.eval(), features)
    tokenizer = train_bpe_tokenizer(tokenizer_corpus(world), vocab_size=sc.vocab_size)
    facts["text_loss"] = train_text_tower(
        world, model, tokenizer, audio, distinct, targets, variant, progress
    )
    directory = directory or world.student_dir_for(variant)
    round_to_half(model)  # what ships is exactly what the build goes on with (birdsearch.toy.shipped)
    save_student(model.eval(), tokenizer, directory)
    caption_facts = {"variant": variant, "captioned": named, "captions": distinct}
    (directory / "toy_captions.json").write_text(json.dumps(caption_facts, indent=1))
    return {**facts, "captions": len(distinct)}


def prepared_captions(
    world: ToyWorld, variant: str, species: list[ToySpecies]
) -> tuple[list[str], torch.Tensor, list[str]]:
    """The distinct captions, each training window's caption index, and the species that were named."""
    # own-captions draws as realistic does: both realistic students are told the same captions
    stream = 0 if variant in ("realistic", OWN_CAPTIONS) else 1
    rng = np.random.default_rng([world.config.seed, 41, stream])
    captions, named = recording_captions(world, variant, species, rng)
    distinct = sorted(set(captions))
    return distinct, torch.tensor([distinct.index(c) for c in captions]), named


def train_audio_tower(
    world: ToyWorld,
    model: Any,
    features: torch.Tensor,
    species: list[ToySpecies],
    progress: bool,
    targets: torch.Tensor | None = None,
) -> float:
    """Phase 1: the audio tower and projection against learnable caption vectors; returns the final loss.

    ``targets``: each window's caption index (own-captions); default its species (perfect).
    """
    sc = world.config.student
    if targets is None:
        targets = torch.tensor([sp.label for sp in species])
    torch.manual_seed(world.config.seed)
    classes = max(len(world.species), int(targets.max()) + 1)  # own-captions may have more captions
    captions = torch.nn.Parameter(torch.randn(classes, sc.projection_dim))
    audio_side = torch.nn.ModuleDict(
        {"tower": model.audio_model, "projection": model.audio_projection}
    ).train()
    # The affine part of HTSAT's input BatchNorm stays at identity (its statistics still learn):
    # its gradient alone would cost a bicubic-resize backward pass, 40 % of a CPU step.
    model.audio_model.audio_encoder.batch_norm.requires_grad_(False)
    logit_scale = torch.nn.Parameter(model.logit_scale_a.detach().clone())
    optimizer = optimizer_for(audio_side, sc.lr)
    optimizer.add_param_group({"params": [captions, logit_scale], "weight_decay": 0.0})
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, sc.steps))
    rng = np.random.default_rng([world.config.seed, 43])
    index_stream = batches(len(features), sc.batch_size, rng)
    losses: list[float] = []
    for _ in (bar := tqdm(range(sc.steps), desc="toy student (audio)", unit="step", disable=not progress)):
        index = torch.from_numpy(next(index_stream))
        audio = F.normalize(
            encode_audio(model.audio_model, model.audio_projection, features[index].float()), dim=-1
        )
        loss = class_contrastive_loss(audio, F.normalize(captions, dim=-1), targets[index], logit_scale.exp())
        step(optimizer, schedule, loss, logit_scale)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.audio_model.audio_encoder.batch_norm.requires_grad_(True)
    return round(float(np.mean(losses[-20:])), 4)


@torch.no_grad()
def embed_features(model: Any, features: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, projection_dim) unit audio embeddings of (N, 1, frames, mels) features, in eval mode."""
    chunks = [
        encode_audio(model.audio_model, model.audio_projection, features[i : i + batch_size].float())
        for i in range(0, len(features), batch_size)
    ]
    return F.normalize(torch.cat(chunks), dim=-1)


def train_text_tower(
    world: ToyWorld,
    model: Any,
    tokenizer: Any,
    audio: torch.Tensor,
    captions: list[str],
    targets: torch.Tensor,
    variant: str,
    progress: bool,
) -> float:
    """Phase 2: a fresh text tower and projection against locked audio embeddings, put into ``model``."""
    sc = world.config.student
    fresh = build_student(student_clap_config(sc), seed=world.config.seed + 1)
    tower = torch.nn.ModuleDict({"text": fresh.text_model, "projection": fresh.text_projection}).train()
    tokens = tokenizer(captions, padding=True, return_tensors="pt")
    logit_scale = torch.nn.Parameter(fresh.logit_scale_a.detach().clone())
    optimizer = optimizer_for(tower, sc.lr)
    optimizer.add_param_group({"params": [logit_scale], "weight_decay": 0.0})
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, sc.text_steps))
    rng = np.random.default_rng([world.config.seed, 44])
    index_stream = batches(len(audio), min(256, len(audio)), rng)
    losses: list[float] = []
    for _ in (bar := tqdm(range(sc.text_steps), desc=f"toy student ({variant} text)", disable=not progress)):
        index = torch.from_numpy(next(index_stream))
        text = F.normalize(tower["projection"](tower["text"](**tokens).pooler_output), dim=-1)
        loss = class_contrastive_loss(audio[index], text, targets[index], logit_scale.exp())
        step(optimizer, schedule, loss, logit_scale)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.text_model.load_state_dict(tower["text"].state_dict())
    model.text_projection.load_state_dict(tower["projection"].state_dict())
    with torch.no_grad():  # one temperature, both directions
        model.logit_scale_a.copy_(logit_scale)
        model.logit_scale_t.copy_(logit_scale)
    return round(float(np.mean(losses[-20:])), 4)


def step(
    optimizer: torch.optim.Optimizer, schedule: Any, loss: torch.Tensor, logit_scale: torch.Tensor
) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    schedule.step()
    with torch.no_grad():
        logit_scale.clamp_(0, np.log(100))  # CLIP's cap on the inverse temperature


def _front_end() -> FrontEndConfig:
    from transformers import ClapFeatureExtractor

    return FrontEndConfig.from_feature_extractor(ClapFeatureExtractor(**BIOLINGUAL_FEATURES))


# BioLingual's front end, read from the same preprocessor_config.json the student is saved with.
FRONT_END = _front_end()
