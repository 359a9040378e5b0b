"""The teacher: BioCLIP-2 (open_clip ViT-L/14, 768-d), frozen. Images and species names to embeddings.

Loaded from the directory a spec resolves to (``birdsearch.model.hub``) with open_clip's own
``local-dir:`` loader, so the model, its image preprocessing (from ``open_clip_config.json``) and its
tokenizer are exactly the publisher's. Every output is float32, L2-normalised, on the CPU.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from birdsearch.errors import BirdsearchError, CheckpointError, IncompleteCheckpointError
from birdsearch.model import hub
from birdsearch.model.device import autocast, resolve_device
from birdsearch.model.names import Taxon, templates_for

log = logging.getLogger(__name__)

DEFAULT_TEACHER = hub.DEFAULT_TEACHER  # defined once, in hub


# open_clip warns on the root logger that a model built without weights is random; here the
# weights are loaded right after, so the warning would be false.
RANDOM_INIT_WARNING = "No pretrained weights loaded"


@contextmanager
def dropping_log_records(prefix: str) -> Iterator[None]:
    """Drop root-logger records whose message starts with ``prefix``, for the duration."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def load_weights(model: Any, resolved: hub.ResolvedModel) -> None:
    """Load ``resolved``'s weights into ``model``; IncompleteCheckpointError if any key does not match.

    open_clip's own ``load_checkpoint`` reads the file and applies its format conversions (older
    checkpoints, other publishers' layouts); ``strict=False`` so that every missing and unexpected
    key is listed in one error, instead of torch's first failure.
    """
    from open_clip.factory import load_checkpoint

    weights = resolved.weights_file
    incompatible = load_checkpoint(model, str(weights), strict=False)
    if incompatible.missing_keys or incompatible.unexpected_keys:
        raise IncompleteCheckpointError(
            f"teacher {resolved.spec}", weights.name, incompatible.missing_keys, incompatible.unexpected_keys
        )


def files_fingerprint(resolved: hub.ResolvedModel) -> dict[str, str]:
    """What ``Teacher.describe`` derives the preprocessing from, besides the weights: the config
    file's bytes and open_clip's version. Read without building the model."""
    config = resolved.path / hub.CONFIG_FILE["teacher"]
    return {
        "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
        "open_clip": importlib.metadata.version("open_clip_torch"),
    }


def recorded_description(spec: str, recorded: dict[str, Any]) -> dict[str, Any] | None:
    """``recorded`` (a ``describe()`` kept in an index manifest) when ``spec`` still resolves to the
    same files, else None.

    The description is a function of the spec, the weights, the config file and open_clip's
    version; when all four are unchanged it is known without building the model (seconds and
    gigabytes for BioCLIP-2), so a reindex that embeds nothing never loads it. The weights' hash is
    cached by size and mtime (``hub.weights_sha256``), as photos are.
    """
    try:
        resolved = hub.resolve(spec, "teacher")
        same = (
            recorded.get("id") == resolved.spec
            and recorded.get("files") == files_fingerprint(resolved)
            and recorded.get("weights_sha256") == hub.weights_sha256(resolved.weights_file)
        )
    except (BirdsearchError, OSError, importlib.metadata.PackageNotFoundError):
        return None  # loading the model names the problem
    return dict(recorded) if same else None


class Teacher:
    """A frozen open_clip image-text model with batch embedding APIs."""

    def __init__(
        self, model: Any, preprocess: Any, tokenizer: Any, resolved: hub.ResolvedModel, device: torch.device
    ):
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess  # PIL image -> (3, H, W) float tensor, the model's own transform
        self.tokenizer = tokenizer
        self.resolved = resolved
        self.device = device

    @classmethod
    def load(
        cls, spec: str = DEFAULT_TEACHER, device: str | torch.device = "auto", download: bool = False
    ) -> Teacher:
        """Load a teacher from a spec ('hf-hub:org/repo', 'local-dir:/path' or 'toy').

        With ``download`` a hub model missing from the cache is fetched (unless HF_HUB_OFFLINE is
        set); without it, a missing model raises ModelUnavailableError saying how to provision it.
        """
        import open_clip

        resolved = hub.resolve_or_download(spec, "teacher") if download else hub.resolve(spec, "teacher")
        target = resolve_device(device)
        local = f"local-dir:{resolved.path}"
        try:
            # The architecture and transforms from the config alone; the weights are loaded below,
            # from the file hub chose (the one whose checksum indexes record), and checked key by key.
            with dropping_log_records(RANDOM_INIT_WARNING):
                model, _, preprocess = open_clip.create_model_and_transforms(
                    local, device=target, load_weights=False, pretrained_text=False
                )
            load_weights(model, resolved)
            tokenizer = open_clip.get_tokenizer(local)
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            raise CheckpointError(f"teacher {resolved.spec} at {resolved.path} failed to load: {e}") from e
        log.info("teacher %s loaded on %s (dim %d)", resolved.spec, target, model.text_projection.shape[-1])
        return cls(model, preprocess, tokenizer, resolved, target)

    @property
    def id(self) -> str:
        return self.resolved.spec

    @cached_property
    def config(self) -> dict[str, Any]:
        return json.loads((self.resolved.path / hub.CONFIG_FILE["teacher"]).read_text())

    @property
    def dim(self) -> int:
        return int(self.config["model_cfg"]["embed_dim"])

    @cached_property
    def weights_sha256(self) -> str:
        return hub.weights_sha256(self.resolved.weights_file)

    @cached_property
    def preprocess_config(self) -> dict[str, Any]:
        """The image preprocessing this model uses (recorded in every index it builds)."""
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(self.model)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}

    def describe(self) -> dict[str, Any]:
        """Facts that identify this teacher, for index manifests and checkpoint cards."""
        return {
            "id": self.id,
            "dim": self.dim,
            "weights_sha256": self.weights_sha256,
            "preprocess": self.preprocess_config,
            "files": files_fingerprint(self.resolved),
        }

    @torch.no_grad()  # not inference_mode: callers may use the outputs as training targets
    def embed_images(self, images: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        """Images to (N, dim) embeddings.

        Args:
            images: PIL images (preprocessed here), or a (N, 3, H, W) batch already preprocessed
                with ``self.preprocess``.
        """
        if not isinstance(images, torch.Tensor):
            images = torch.stack([self.preprocess(img) for img in images])
        with autocast(self.device):
            features = self.model.encode_image(images.to(self.device, non_blocking=True))
        return F.normalize(features.float(), dim=-1).cpu()

    @torch.no_grad()  # not inference_mode: callers may use the outputs as training targets
    def embed_texts(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Texts to (N, dim) embeddings, in batches of ``batch_size``."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            with autocast(self.device):
                features = self.model.encode_text(tokens)
            out.append(F.normalize(features.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, self.dim)

    def embed_species(
        self, taxa: Sequence[Taxon], name_format: str = "taxon_com", templates: str | Sequence[str] = "openai"
    ) -> torch.Tensor:
        """Zero-shot class embeddings (S, dim): each name in every template, normalised, averaged, renormalised."""
        template_list = templates_for(templates if isinstance(templates, str) else tuple(templates))
        names = [taxon.name(name_format) for taxon in taxa]
        texts = [template.format(name) for name in names for template in template_list]
        per_text = self.embed_texts(texts).view(len(names), len(template_list), -1)
        return F.normalize(per_text.mean(dim=1), dim=-1)
