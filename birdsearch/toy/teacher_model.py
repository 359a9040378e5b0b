"""The toy teacher: a small open_clip ``CLIP`` trained on the world's photos and their species names.

Like BioCLIP, it learns from names in several formats (mostly ``taxon_com``) inside varied
templates, so that its zero-shot class embeddings (names averaged over the OpenAI templates) land
on the photos of their species: the text-image alignment that distillation relies on. It is saved
in open_clip's format and loads through ``Teacher.load`` like BioCLIP-2.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from birdsearch.errors import ConfigError
from birdsearch.model.names import NAME_FORMATS, OPENAI_TEMPLATES, TEMPLATE_SETS
from birdsearch.model.standins import OPENAI_PREPROCESS_CFG, build_teacher, save_teacher
from birdsearch.toy.config import TeacherTrainConfig
from birdsearch.toy.shipped import round_to_half, token_table
from birdsearch.toy.training import batches, class_contrastive_loss, optimizer_for, warmup_cosine

# Annotations only: the world imports the builders, so a runtime import would close a circle.
if TYPE_CHECKING:
    from birdsearch.toy.world import ToyWorld

log = logging.getLogger(__name__)

CONTEXT_LENGTH = 48  # text context: holds the longest toy taxon_com text (43 tokens); BioCLIP-2 uses 77
VOCAB_SIZE = 49408  # open_clip's SimpleTokenizer
TRAIN_TEMPLATES = (*OPENAI_TEMPLATES, *TEMPLATE_SETS["single"], *TEMPLATE_SETS["none"])


def teacher_model_cfg(tc: TeacherTrainConfig) -> dict[str, Any]:
    """The open_clip ``model_cfg`` of the toy teacher (what ``open_clip_config.json`` holds)."""
    vision: dict[str, Any] = {
        "image_size": tc.image_size,
        "width": tc.vision_width,
        "head_width": tc.heads_width,
    }
    if tc.vision_tower == "resnet":
        vision["layers"] = [tc.vision_layers] * 4  # a list of stage depths makes open_clip build a ResNet
    elif tc.vision_tower == "vit":
        vision.update(layers=tc.vision_layers, patch_size=tc.patch_size)
    else:
        raise ConfigError(f"unknown toy teacher vision tower {tc.vision_tower!r}: use 'resnet' or 'vit'")
    return {
        "embed_dim": tc.embed_dim,
        "vision_cfg": vision,
        "text_cfg": {
            "context_length": CONTEXT_LENGTH,
            "vocab_size": VOCAB_SIZE,
            "width": tc.text_width,
            "heads": tc.text_width // tc.heads_width,
            "layers": tc.text_layers,
        },
    }


def load_photos(world: ToyWorld, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher-training photos through the model's own preprocessing, and their labels."""
    import open_clip

    preprocess = open_clip.image_transform(
        image_size,
        is_train=False,
        mean=OPENAI_PREPROCESS_CFG["mean"],
        std=OPENAI_PREPROCESS_CFG["std"],
        resize_mode=OPENAI_PREPROCESS_CFG["resize_mode"],
        interpolation=OPENAI_PREPROCESS_CFG["interpolation"],
    )
    label_of = {sp.scientific: sp.label for sp in world.species}
    rows = world.read_manifest(world.teacher_images_manifest)
    photos = torch.stack([preprocess(Image.open(row["path"]).convert("RGB")) for row in rows])
    labels = torch.tensor([label_of[row["species"]] for row in rows])
    return photos, labels


def tokenized_names(world: ToyWorld) -> torch.Tensor:
    """(S, formats, templates, context) token ids of every species name in every format and template."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer(context_length=CONTEXT_LENGTH)
    texts = [
        template.format(taxon.name(fmt))
        for taxon in world.taxa
        for fmt in NAME_FORMATS
        for template in TRAIN_TEMPLATES
    ]
    tokens = tokenizer(texts)
    return tokens.view(len(world.taxa), len(NAME_FORMATS), len(TRAIN_TEMPLATES), CONTEXT_LENGTH)


def sample_texts(tokens: torch.Tensor, rng: np.random.Generator, taxon_com_fraction: float) -> torch.Tensor:
    """One text per species: a random template around a name, mostly in the taxon_com format."""
    n_species, n_formats, n_templates, _ = tokens.shape
    taxon_com = NAME_FORMATS.index("taxon_com")
    others = [i for i in range(n_formats) if i != taxon_com]
    formats = np.where(rng.random(n_species) < taxon_com_fraction, taxon_com, rng.choice(others, n_species))
    templates = rng.integers(n_templates, size=n_species)
    return tokens[torch.arange(n_species), torch.from_numpy(formats), torch.from_numpy(templates)]


def train_teacher(world: ToyWorld, progress: bool = True) -> dict[str, Any]:
    """Train the toy teacher and save it to ``world.teacher_dir``; returns facts about the run."""
    tc = world.config.teacher
    rng = np.random.default_rng([world.config.seed, 31])
    model_cfg = teacher_model_cfg(tc)
    model = build_teacher(model_cfg, seed=world.config.seed).train()
    with torch.no_grad():  # a start numpy draws alike everywhere: the shipped copy stores only changed rows
        model.token_embedding.weight.copy_(
            torch.from_numpy(token_table(world.config.seed, *model.token_embedding.weight.shape))
        )
    photos, labels = load_photos(world, tc.image_size)
    tokens = tokenized_names(world)
    optimizer = optimizer_for(model, tc.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, tc.steps))
    bar = tqdm(range(tc.steps), desc="toy teacher", unit="step", disable=not progress)
    index_stream = batches(len(photos), tc.batch_size, rng)
    losses = []
    for _ in bar:
        index = torch.from_numpy(next(index_stream))
        images = photos[index]
        flip = torch.from_numpy(rng.random(len(index)) < 0.5)
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        image_emb = F.normalize(model.encode_image(images), dim=-1)
        text_emb = F.normalize(model.encode_text(sample_texts(tokens, rng, tc.taxon_com_fraction)), dim=-1)
        loss = class_contrastive_loss(image_emb, text_emb, labels[index], model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    round_to_half(model)  # what ships is exactly what the build goes on with (birdsearch.toy.shipped)
    save_teacher(model.eval(), world.teacher_dir, model_cfg)
    return {"steps": tc.steps, "final_loss": round(float(np.mean(losses[-20:])), 4)}
