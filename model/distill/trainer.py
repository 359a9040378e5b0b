"""``birdsearch distill``: fine-tune the student's audio tower into the teacher's text space.

The loop, in order: validate the manifest; load the student; take the species' target text
embeddings from the cache (the teacher is loaded only to fill it); build the encoder (student audio
tower + projection + a head into the target space, optionally started from a text-space map); then
AdamW with warm-up and cosine decay over InfoNCE with a learnable temperature, bf16 autocast on
CUDA, gradient accumulation, DDP under torchrun; a checkpoint every N steps and at each epoch's end
from which a rerun resumes exactly; validation each epoch; the encoder saved with its card.

Run directory (``--out``)::

    config.json         the configuration (a resume must match it)
    log.jsonl           one line per logged step and per validation
    checkpoints/        training state, the last few steps
    encoder/            the result, in the distilled-encoder format (birdsearch.model.encoder), with
                        its training windows embedded beside it (birdsearch.model.novelty's reference:
                        what the service measures how unlike the training audio a window is against)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from birdsearch.errors import CheckpointError, ConfigError
from birdsearch.model import metrics
from birdsearch.model.audio import split as split_windows
from birdsearch.model.device import autocast
from birdsearch.model.distill import checkpoint, data
from birdsearch.model.distill import distributed as ddp
from birdsearch.model.distill.manifest import load_manifest
from birdsearch.model.distill.objectives import (
    OBJECTIVES,
    LogitScale,
    gather,
    gather_with_grad,
    objective_loss,
)
from birdsearch.model.distill.targets import Targets, TargetSpec, species_targets
from birdsearch.model.encoder import DistilledAudioEncoder, EncoderCard, LoadedEncoder, save_encoder
from birdsearch.model.hub import DEFAULT_STUDENT, DEFAULT_TEACHER
from birdsearch.model.mel import MelFrontEnd
from birdsearch.model.novelty import build_reference, save_reference, spread_order
from birdsearch.model.species_head import SpeciesHead
from birdsearch.model.student import PROMPT, Student
from birdsearch.model.text_maps import fit_map

log = logging.getLogger(__name__)

HEAD_INITS = ("random", "ridge", "procrustes")


@dataclass
class DistillConfig:
    """Everything that decides a distillation run. Fields in ``RUNTIME_FIELDS`` may change on resume."""

    manifest: str  # CSV/TSV/Parquet: path, species, [start_s, end_s, split]
    out: str  # run directory
    teacher: str = DEFAULT_TEACHER  # image-text model whose text space is the target
    student: str = DEFAULT_STUDENT  # audio-text model whose audio tower is fine-tuned
    taxa: str | None = None  # species table; None: species from the manifest
    audio_root: str | None = None  # folder relative audio paths are under (default: the manifest's)
    target: str = "teacher"  # teacher | student-text (ablation) | rotated-teacher (control)
    name_format: str = "taxon_com"  # teacher species name format
    templates: str = "openai"  # teacher template set
    objective: str = "batch"  # batch (symmetric, in-batch; README: why) | class (logits over all species)
    head_init: str = "procrustes"  # random | ridge | procrustes: the head starts as this text map
    epochs: int = 10
    # The warm-up and cosine decay span this many epochs (None: ``epochs``). A run of ``epochs`` on
    # the schedule of a longer one is exactly that longer run's state after ``epochs``: what a choice
    # of epochs among a run's validations (birdsearch.toy.study) then trains.
    schedule_epochs: int | None = None
    batch_size: int = 256  # clips per optimizer step, over all devices and accumulation steps
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # peak learning rate (SoundBind's)
    weight_decay: float = 0.01  # on weight matrices only; never on biases, norms or the temperature
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_fraction: float = 0.05  # of all steps, linear from 0 (at least one step)
    min_lr_ratio: float = 0.0  # cosine decays to lr × this
    init_temperature: float = 0.07  # logit scale starts at 1/0.07
    max_logit_scale: float = 100.0
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0 turns clipping off
    freeze_batchnorm: bool = True  # keep the pretrained input BatchNorm statistics (see README)
    val_fraction: float = 0.1  # held out per species when the manifest has no val split
    seed: int = 0
    rotation_seed: int = 0  # for target rotated-teacher
    # runtime: may differ between a run and its resume
    device: str = "auto"
    workers: int = 2  # loader processes decoding audio, when the clips do not fit data.PRELOAD_BYTES
    checkpoint_every: int = 200  # optimizer steps; 0: only at each epoch's end
    keep_checkpoints: int = 2
    log_every: int = 10  # steps between JSONL log lines
    check_audio: bool = True  # read every file's header before training
    compile: bool = False  # torch.compile the encoder (a GPU lever; see bench/distill_throughput.py)
    progress: bool = True  # tqdm bar on rank 0
    stop_after: int | None = None  # stop (as if preempted) after this many steps, checkpoint saved
    # Also fit the species classifier on the frozen student beside the encoder (the query modes
    # classifier and hybrid, birdsearch.model.species_head); cheap next to distillation.
    species_classifier: bool = True
    # A gallery manifest (path, species): its photos choose the encoder's default query mode on the
    # validation clips; without it the default stays "distilled".
    val_gallery: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded in the card

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}: use one of {', '.join(OBJECTIVES)}")
        if self.head_init not in HEAD_INITS:
            raise ConfigError(f"unknown head init {self.head_init!r}: use one of {', '.join(HEAD_INITS)}")
        for name in ("epochs", "batch_size", "accumulate"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if self.schedule_epochs is not None and self.schedule_epochs < self.epochs:
            raise ConfigError(
                f"schedule_epochs {self.schedule_epochs} is shorter than the {self.epochs} epochs trained; "
                "give at least as many, or none"
            )
        TargetSpec(self.target, self.name_format, self.templates, self.rotation_seed)


RUNTIME_FIELDS = {
    "out", "device", "workers", "checkpoint_every", "keep_checkpoints", "log_every", "check_audio",
    "compile", "progress", "stop_after", "extra", "species_classifier", "val_gallery",
}  # fmt: skip


@dataclass
class DistillResult:
    encoder_dir: Path | None  # None when stopped before the end (stop_after)
    steps: int
    total_steps: int
    history: list[dict[str, Any]]  # validation lines


class DistillModule(nn.Module):
    """The trainable part: encoder and temperature. BatchNorm stays in eval mode when frozen."""

    def __init__(self, encoder: DistilledAudioEncoder, scale: LogitScale, freeze_batchnorm: bool):
        super().__init__()
        self.encoder = encoder
        self.scale = scale
        self.freeze_batchnorm = freeze_batchnorm

    def train(self, mode: bool = True) -> DistillModule:
        super().train(mode)
        if self.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(features), self.scale()


def lr_lambda(total_steps: int, warmup_steps: int, min_ratio: float):
    """Linear warm-up to 1, then cosine to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay weight matrices; leave biases, norm parameters and the temperature alone."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One distillation run; ``run()`` does it all (or resumes it)."""

    def __init__(self, config: DistillConfig):
        config.validate()
        self.history: list[dict[str, Any]] = []  # validation records, one per epoch
        self.cfg = config
        self.out = Path(config.out)
        self.dist = ddp.setup(config.device)
        self.device = self.dist.device
        seed_everything(config.seed + self.dist.rank)

    # ---- setup ------------------------------------------------------------------------------------

    def prepare(self) -> None:
        cfg = self.cfg
        self.manifest = load_manifest(
            cfg.manifest,
            cfg.taxa,
            cfg.audio_root,
            cfg.check_audio and self.dist.main,
            cfg.val_fraction,
            cfg.seed,
        )
        self.train_clips, self.val_clips = self.manifest.split("train"), self.manifest.split("val")
        if not self.train_clips:
            raise ConfigError(f"{cfg.manifest}: no training clips (split 'train')")
        self.digest = self.manifest.digest()
        student = Student.load(cfg.student, self.device)
        self.student_id = student.id
        self.front_end = student.front_end_config
        self.mel = MelFrontEnd(self.front_end, self.device)
        self.targets = self.load_targets()
        self.target_vectors = self.targets.embeddings.to(self.device)
        encoder = DistilledAudioEncoder.from_student(student.model, self.targets.space["dim"]).to(self.device)
        self.init_head(encoder, student)
        del student
        self.module = DistillModule(
            encoder, LogitScale(cfg.init_temperature, cfg.max_logit_scale), cfg.freeze_batchnorm
        )
        self.module.to(self.device)
        self.forward_module: nn.Module = self.module
        if cfg.compile:
            self.forward_module = torch.compile(self.module)  # type: ignore[assignment]
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_module = DistributedDataParallel(self.forward_module, device_ids=ids)
        self.plan = data.BatchPlan(
            len(self.train_clips), cfg.batch_size, self.dist.world_size, cfg.accumulate
        )
        self.check_plan()
        self.total_steps = cfg.epochs * self.plan.steps_per_epoch
        schedule_steps = (cfg.schedule_epochs or cfg.epochs) * self.plan.steps_per_epoch
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.module, cfg.weight_decay),
            lr=cfg.lr,
            betas=cfg.betas,
            eps=1e-6,
            fused=self.device.type == "cuda",
        )
        warmup = max(1, round(cfg.warmup_fraction * schedule_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(schedule_steps, warmup, cfg.min_lr_ratio)
        )
        self.dataset = data.ClipDataset(
            self.train_clips, self.front_end.sample_rate, self.front_end.window_samples, cfg.seed
        )
        self.val_dataset = data.ClipDataset(
            self.val_clips, self.front_end.sample_rate, self.front_end.window_samples, cfg.seed
        )
        self.workers = self.preload_small_sets()
        # Loading models may draw random numbers (a teacher built before its weights are read, on a
        # cache miss only): seed again so that training starts from the same RNG state regardless.
        seed_everything(cfg.seed + self.dist.rank)

    def preload_small_sets(self) -> int:
        """Decode the clips once when they fit in memory; the loader workers to use (0 then)."""
        size = self.dataset.decoded_bytes() + self.val_dataset.decoded_bytes()
        if size > data.PRELOAD_BYTES:
            return self.cfg.workers
        self.dataset.preload()
        self.val_dataset.preload()
        log.info("clips decoded once and held in memory (%.1f MB)", size / 2**20)
        return 0

    def check_plan(self) -> None:
        cfg, plan = self.cfg, self.plan
        if cfg.batch_size % (self.dist.world_size * cfg.accumulate):
            raise ConfigError(
                f"batch size {cfg.batch_size} is not divisible by {self.dist.world_size} processes × "
                f"{cfg.accumulate} accumulation steps"
            )
        if plan.steps_per_epoch == 0:
            raise ConfigError(
                f"{plan.clips} training clips do not fill one step of {cfg.batch_size} clips; lower --batch-size"
            )

    def load_targets(self) -> Targets:
        """Rank 0 fills the cache (loading the teacher if it must); the others read it after."""
        cfg = self.cfg
        spec = TargetSpec(cfg.target, cfg.name_format, cfg.templates, cfg.rotation_seed)
        if self.dist.main:
            targets = species_targets(spec, self.manifest.taxa, cfg.teacher, cfg.student, self.device)
        ddp.barrier(self.dist)
        if not self.dist.main:
            targets = species_targets(spec, self.manifest.taxa, cfg.teacher, cfg.student, self.device)
        return targets

    def init_head(self, encoder: DistilledAudioEncoder, student: Student) -> None:
        """Start the head as a text-space map (student captions → targets), so step 0 is that baseline."""
        if self.cfg.head_init == "random":
            return
        captions = student.embed_species(self.manifest.taxa, "com", PROMPT)
        fitted = fit_map(self.cfg.head_init, captions, self.targets.embeddings)
        with torch.no_grad():
            encoder.head.weight.copy_(fitted.weight.to(encoder.head.weight.device))

    # ---- state ------------------------------------------------------------------------------------

    def state(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": ddp.gather_objects(self.dist, checkpoint.rng_state()),
            "history": self.history,
            "config": self.comparable_config(),
            "manifest_digest": self.digest,
            "targets_key": self.targets.key,
            "world_size": self.dist.world_size,
        }

    def comparable_config(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.cfg).items() if k not in RUNTIME_FIELDS}

    def save_checkpoint(self, step: int) -> None:
        state = self.state(step)  # every rank takes part in gathering RNG states
        if self.dist.main:
            path = checkpoint.save(self.out / "checkpoints", step, state, self.cfg.keep_checkpoints)
            log.debug("checkpoint %s", path)
        ddp.barrier(self.dist)

    def resume(self) -> int:
        """Load the newest checkpoint if there is one; return the step to continue from."""
        state = checkpoint.latest(self.out / "checkpoints")
        if state is None:
            return 0
        current = self.comparable_config()
        mismatch = {k: (v, current.get(k)) for k, v in state["config"].items() if current.get(k) != v}
        if mismatch:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in mismatch.items())
            raise ConfigError(
                f"{self.out} holds a run with another configuration ({detail}); use a new --out, or "
                "delete its checkpoints/ to start over"
            )
        if state["manifest_digest"] != self.digest:
            raise ConfigError(
                f"{self.out}: the manifest or its audio files changed since the checkpoint was saved"
            )
        if state["targets_key"] != self.targets.key:
            raise CheckpointError(
                f"{self.out}: the target text embeddings changed since the checkpoint was saved"
            )
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = state["history"]
        rngs = state["rng"]
        if len(rngs) == self.dist.world_size:
            checkpoint.set_rng_state(rngs[self.dist.rank])
        else:
            log.warning(
                "resuming on %d processes from %d: RNG streams differ", self.dist.world_size, len(rngs)
            )
        log.info("resumed from %s (step %d)", state["path"], state["step"])
        return int(state["step"])

    # ---- logging ----------------------------------------------------------------------------------

    def open_log(self, step: int) -> None:
        """Start the JSONL log, dropping lines past ``step`` left by an interrupted run."""
        self.log_path = self.out / "log.jsonl"
        if not self.dist.main:
            return
        kept = []
        if step and self.log_path.exists():
            for line in self.log_path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= step:
                        kept.append(line)
                except ValueError:
                    continue  # a half-written last line
        self.log_path.write_text("".join(line + "\n" for line in kept))

    def write_log(self, record: dict[str, Any]) -> None:
        if self.dist.main:
            with self.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    # ---- the loop ---------------------------------------------------------------------------------

    def run(self) -> DistillResult:
        try:
            self.prepare()
            self.history = []
            if self.dist.main:
                self.out.mkdir(parents=True, exist_ok=True)
                (self.out / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
            step = self.resume()
            self.open_log(step)
            return self.loop(step)
        finally:
            ddp.teardown(self.dist)

    def loop(self, step: int) -> DistillResult:
        cfg, steps_per_epoch = self.cfg, self.plan.steps_per_epoch
        bar = self.progress_bar(step)
        if step and step % steps_per_epoch == 0 and len(self.history) < step // steps_per_epoch:
            self.validate_epoch(step)  # interrupted between an epoch's last step and its validation
        while step < self.total_steps:
            epoch, position = divmod(step, steps_per_epoch)
            step = self.train_epoch(epoch, position * cfg.accumulate, step, bar)
            if step % steps_per_epoch == 0:
                self.validate_epoch(step)
                self.save_checkpoint(step)
            if cfg.stop_after is not None and cfg.stop_after <= step < self.total_steps:
                bar.close()
                return DistillResult(None, step, self.total_steps, self.history)
        bar.close()
        return DistillResult(self.save_result(step), step, self.total_steps, self.history)

    def progress_bar(self, step: int):
        from tqdm import tqdm

        return tqdm(
            total=self.total_steps,
            initial=step,
            unit="step",
            desc="distill",
            disable=not (self.cfg.progress and self.dist.main),
            dynamic_ncols=True,
        )

    def train_epoch(self, epoch: int, start_micro: int, step: int, bar) -> int:
        """Train from micro-batch ``start_micro`` of ``epoch`` to its end (or ``stop_after``)."""
        cfg, plan = self.cfg, self.plan
        batches = data.MicroBatches(plan, cfg.seed, epoch, self.dist.rank, start_micro)
        loader = data.loader(
            self.dataset, batches, self.workers, self.device.type == "cuda", seed=cfg.seed * 1000 + epoch
        )
        self.module.train()
        window_start, window_clips, losses = time.perf_counter(), 0, []
        for micro, (waves, labels) in enumerate(loader, start=start_micro):
            last_of_step = (micro + 1) % cfg.accumulate == 0
            loss = self.micro_step(waves, labels, sync=last_of_step)
            losses.append(loss)
            window_clips += len(labels) * self.dist.world_size
            if not last_of_step:
                continue
            self.optimizer_step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == self.total_steps:
                elapsed = time.perf_counter() - window_start
                record = self.step_record(step, epoch, losses, window_clips / max(elapsed, 1e-9))
                self.write_log(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", T=f"{record['temperature']:.3f}")
                window_start, window_clips, losses = time.perf_counter(), 0, []
            end_of_epoch = step % plan.steps_per_epoch == 0  # the epoch's end saves after validating
            periodic = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
            stopping = cfg.stop_after is not None and step >= cfg.stop_after
            if (periodic or stopping) and not end_of_epoch:
                self.save_checkpoint(step)
            if stopping:
                break
        return step

    def micro_step(self, waves: torch.Tensor, labels: torch.Tensor, sync: bool) -> torch.Tensor:
        no_sync = getattr(self.forward_module, "no_sync", None)
        context = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with context:
            return forward_backward(
                self.forward_module, self.mel, waves, labels, self.target_vectors, self.cfg.objective,
                self.device, self.cfg.accumulate,
            )  # fmt: skip

    def optimizer_step(self) -> None:
        optimizer_step(self.module, self.optimizer, self.scheduler, self.cfg.max_grad_norm)

    def step_record(
        self, step: int, epoch: int, losses: list[torch.Tensor], clips_per_s: float
    ) -> dict[str, Any]:
        scale = float(self.module.scale().detach())
        return {
            "step": step,
            "epoch": epoch,
            "loss": ddp.mean(self.dist, float(torch.stack(losses).mean())),
            "temperature": 1.0 / scale,
            "logit_scale": scale,
            "lr": self.scheduler.get_last_lr()[0],
            "clips_per_s": clips_per_s,
            "time": time.time(),
        }

    # ---- validation and result ---------------------------------------------------------------------

    @torch.no_grad()
    def embed_validation(self) -> tuple[torch.Tensor, torch.Tensor]:
        batches = data.validation_batches(len(self.val_clips), max(1, self.plan.micro_batch))
        loader = data.loader(self.val_dataset, batches, self.workers, False, seed=self.cfg.seed)
        encoder = self.module.encoder
        encoder.eval()
        out, labels = [], []
        for waves, y in loader:
            with autocast(self.device):
                out.append(F.normalize(encoder(self.mel(waves.to(self.device))).float(), dim=-1).cpu())
            labels.append(y)
        self.module.train()
        return torch.cat(out), torch.cat(labels)

    def validate_epoch(self, step: int) -> None:
        """Held-out clips against every species' target: loss, top-1, class-wise mAP (rank 0)."""
        epoch = step // self.plan.steps_per_epoch - 1
        if not self.val_clips:
            self.history.append({"step": step, "epoch": epoch, "val_clips": 0})
            return
        record: dict[str, Any] = {}
        if self.dist.main:
            audio, labels = self.embed_validation()
            targets = self.targets.embeddings
            scale = float(self.module.scale().detach())
            scores = (audio @ targets.T).numpy()
            cls = metrics.classification_metrics(scores, labels.numpy())
            record = {
                "step": step,
                "epoch": epoch,
                "val_loss": float(F.cross_entropy(scale * audio @ targets.T, labels)),
                "val_top1": cls["top1"],
                "val_cmAP": cls["cmAP"],
                "val_clips": len(labels),
            }
            self.write_log(record)
            log.info("epoch %d: val loss %.4f top-1 %.3f cmAP %.3f", epoch, record["val_loss"],
                     record["val_top1"], record["val_cmAP"])  # fmt: skip
        self.history.append(ddp.broadcast_object(self.dist, record))

    def save_result(self, step: int) -> Path | None:
        cfg = self.cfg
        path = None
        if self.dist.main:
            encoder = self.module.encoder
            card = EncoderCard(
                base_student=self.student_id,
                audio_config=encoder.audio_config.to_dict(),
                projection_dim=encoder.head.in_features,
                teacher=self.targets.space,
                text_format=cfg.name_format if cfg.target != "student-text" else "com",
                templates=cfg.templates if cfg.target != "student-text" else [PROMPT],
                front_end=self.front_end.to_dict(),
                training_data_hash=self.digest,
                training={
                    **{
                        k: v
                        for k, v in self.comparable_config().items()
                        if k not in ("manifest", "taxa", "audio_root")
                    },
                    "manifest": str(Path(cfg.manifest).resolve()),
                    "steps": step,
                    "world_size": self.dist.world_size,
                    "train_clips": len(self.train_clips),
                    "val_clips": len(self.val_clips),
                    "species": len(self.manifest.taxa),
                    "final_temperature": 1.0 / float(self.module.scale().detach()),
                    **({"notes": cfg.extra} if cfg.extra else {}),
                },
                metrics={"val": self.history[-1] if self.history else {}, "val_history": self.history},
            )
            head, card.metrics["modes"] = self.species_head(
                LoadedEncoder(encoder, card, self.out, self.device)
            )
            path = save_encoder(encoder, card, self.out / "encoder", head)
            self.save_reference(encoder, path)
            log.info(
                "distilled encoder saved to %s; default query mode %s", path, card.metrics["modes"]["why"]
            )
        ddp.barrier(self.dist)
        return path

    def species_head(self, encoder: LoadedEncoder) -> tuple[SpeciesHead | None, dict[str, Any]]:
        """The species classifier on the frozen student, fitted on the same clips, and the default query
        mode chosen on the validation clips (``birdsearch.model.distill.classifier``)."""
        from birdsearch.model.distill.classifier import choose_mode, fit_species_head
        from birdsearch.model.distill.targets import weights_checksum

        cfg = self.cfg
        if cfg.target != "teacher":
            return None, {"default": "distilled", "chosen_on": None,
                          "why": f"distilled: an encoder of target {cfg.target!r} has no other mode"}  # fmt: skip
        if not cfg.species_classifier:
            return None, {"default": "distilled", "chosen_on": None,
                          "why": "distilled: no species classifier was fitted (--no-species-classifier)"}  # fmt: skip
        if not self.val_clips:
            return None, {"default": "distilled", "chosen_on": None,
                          "why": "distilled: no validation clips to fit the species classifier on"}  # fmt: skip
        student = Student.load(cfg.student, self.device)
        head = fit_species_head(student, self.train_clips, self.val_clips, self.manifest.taxa,
                                weights_checksum(cfg.student, "student"), cfg.seed)  # fmt: skip
        log.info("species classifier beside the encoder: %s", head.facts)
        gallery = None
        if cfg.val_gallery:
            from birdsearch.model.gallery import from_manifest
            from birdsearch.model.teacher import Teacher

            gallery = from_manifest(cfg.val_gallery, Teacher.load(cfg.teacher, self.device))
        taxa, teacher_species = self.manifest.taxa, self.targets.embeddings
        return head, choose_mode(encoder, student, head, taxa, teacher_species, self.val_clips, gallery)

    @torch.no_grad()
    def save_reference(self, encoder: DistilledAudioEncoder, folder: Path) -> None:
        """Every window of the training clips (cut as the service cuts a recording) in the final
        encoder's tower space: the novelty reference beside it (``birdsearch.model.novelty``)."""
        fe = self.front_end
        encoder.eval()

        def embed(batch: np.ndarray) -> np.ndarray:
            with autocast(self.device):
                _, pooled = encoder(self.mel(torch.from_numpy(batch).to(self.device)), with_tower=True)
            return pooled.float().cpu().numpy()

        def clip_windows(index: int) -> Callable[[], np.ndarray]:
            return lambda: split_windows(self.dataset.samples(index), fe.sample_rate, fe.window_s).samples

        labels = [clip.species for clip in self.train_clips]
        clips = [(labels[i], clip_windows(i)) for i in spread_order(labels, self.cfg.seed)]
        species = [taxon.scientific for taxon in self.manifest.taxa]
        facts = {"source": str(Path(self.cfg.manifest).resolve()), "split": "train", "window_s": fe.window_s,
                 "space": "tower", "training_data_hash": self.digest}  # fmt: skip
        reference = build_reference(embed, clips, species, facts, batch_size=max(1, self.plan.micro_batch))
        save_reference(reference, folder)
        log.info("novelty reference: %d training windows beside the encoder", len(reference.labels))


def forward_backward(
    module: nn.Module,
    mel: MelFrontEnd,
    waves: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    objective: str,
    device: torch.device,
    accumulate: int = 1,
) -> torch.Tensor:
    """One micro-batch: log-mel on the device, forward under autocast, InfoNCE, backward; returns the loss.

    The loss comes back detached and on the device: reading it (a host sync) is left to the logger.

    ``module`` returns (unit audio embeddings, logit scale), e.g. a ``DistillModule`` (or its DDP or
    compiled wrapper). The same function serves ``bench/distill_throughput.py``.
    """
    features = mel(waves.to(device, non_blocking=True))
    labels = labels.to(device, non_blocking=True)
    with autocast(device):
        audio, scale = module(features)
    audio = audio.float()
    if objective == "batch":  # negatives from every rank's clips
        audio, labels = gather_with_grad(audio), gather(labels)
    loss = objective_loss(objective, audio, targets, labels, scale.float())
    (loss / accumulate).backward()
    return loss.detach()


def optimizer_step(
    module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, max_grad_norm: float
) -> None:
    """Clip the gradient norm (when ``max_grad_norm`` > 0), step the optimizer and the schedule, clear grads."""
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def distill(config: DistillConfig) -> DistillResult:
    """Run (or resume) a distillation; see ``DistillConfig`` and the module docstring."""
    return Trainer(config).run()
