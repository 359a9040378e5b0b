"""The toy models shipped with the package, so that a fresh install trains nothing to run the demo.

``python -m birdsearch.toy.export --preset default`` builds a world from scratch (its teacher, both
students and the demo's two distilled encoders, on ``BIRDSEARCH_TOY_THREADS`` threads, 1 unless
set) and writes them under ``birdsearch/toy/shipped/``, one folder per model named like its folder in
the cache (``teacher-<k>``, ``student-<variant>-<k>``, ``encoder-<variant>-<k>``). The key ``k``
hashes the data, the code version and the model's settings, so a shipped model is used only for
the world it was trained on: change a generator or a trainer and the build trains again.

To stay a few MB, a shipped folder stores its weights as float16, which is exact: the toy builds
round every weight to float16 before saving (``round_to_half``), so that what the build uses
downstream is what ships. The teacher's token table (49,408 rows, of which the toy names use a few
hundred) is stored as the rows training changed; the others are its seeded start
(``token_table``), which numpy draws the same on any machine. Installing checks every weights file
against the SHA-256 of the file the build wrote, so an installed model is bit-identical to a
rebuilt one on the same thread count.

The demo's confidences and open-set gates ship too (``calibration-<k>/``, ``k`` the served
encoder's key: ``encoder.calibration.json``, ``encoder.open_set.json`` and the index root's
``index.*``, the cascade's novelty reference with them): a fit is a function of the models, the
world's recordings and the engine's scoring, so the export fits it once, through the demo's own
code, on the installed (float16) encoder, and a first run installs it instead of drawing and scoring
the fitting clips before it can answer.
``tests/toy/test_shipped.py`` fits the tiny world's again and compares.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from birdsearch.toy.config import digest

if TYPE_CHECKING:  # the builders import this module, and the world imports the builders
    from birdsearch.toy.world import ToyWorld

log = logging.getLogger(__name__)

SHIPPED_ROOT = Path(__file__).parent / "shipped"
FACTS_FILE = "shipped.json"
WEIGHTS_SUFFIX = ".safetensors"
ROWS, VALUES = "::rows", "::values"  # a partly trained table: the changed rows' indices and values
TOKEN_TABLE = "token_embedding.weight"  # the toy teacher's open_clip token table
TOKEN_STD = 0.02  # open_clip's initial token embedding scale


def token_table(seed: int, rows: int, width: int) -> np.ndarray:
    """The toy teacher's token table before training: normals x 0.02 from numpy's seeded stream.

    Float16 values (held as float32), so that ``round_to_half`` leaves the rows training never
    touched as they were.
    """
    rng = np.random.default_rng([seed, 32])
    table = rng.standard_normal((rows, width), dtype=np.float32) * np.float32(TOKEN_STD)
    return table.astype(np.float16).astype(np.float32)


def round_to_half(model: Any) -> None:
    """Round every floating weight and buffer of a torch module to the nearest float16 value, in place."""
    import torch

    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())


def encoder_dir_name(world: ToyWorld, variant: str, settings: dict[str, Any]) -> str:
    """``encoder-<variant>-<k>``: ``k`` names the teacher, the student and the distillation settings."""
    keys = {"teacher": world.teacher_dir.name, "student": world.student_dir_for(variant).name}
    return f"encoder-{variant}-{digest({**keys, 'distill': settings})[:8]}"


def install_encoder(world: ToyWorld, variant: str, settings: dict[str, Any], target: Path) -> bool:
    """Put the shipped distilled encoder of ``variant`` at ``target``; False when none ships for them."""
    name = encoder_dir_name(world, variant, settings)
    edit = lambda staged: own_manifest(staged, world.distill_manifest)  # noqa: E731
    return install(target, world.config.seed, name=name, edit=edit) is not None


def calibration_dir_name(world: ToyWorld, settings: dict[str, Any]) -> str:
    """``calibration-<k>``: the demo's calibration of the served (realistic) encoder ``encoder-realistic-<k>``."""
    return encoder_dir_name(world, "realistic", settings).replace("encoder-realistic-", "calibration-", 1)


def install_calibration(world: ToyWorld, settings: dict[str, Any], places: dict[str, Path]) -> bool:
    """Copy each shipped file (``places``: its name in the shipped folder: where it goes); False, and
    nothing copied, when they do not all ship."""
    source = SHIPPED_ROOT / calibration_dir_name(world, settings)
    files = {name: source / name for name in places}
    if not (source / FACTS_FILE).is_file() or not all(path.is_file() for path in files.values()):
        return False
    for name, place in places.items():
        place.parent.mkdir(parents=True, exist_ok=True)
        partial = place.with_name(f".{place.name}.partial")
        shutil.copyfile(files[name], partial)
        partial.replace(place)
    log.info("toy world: installed the shipped %s", source.name)
    return True


def pack_calibration(places: dict[str, Path], out: Path, build_facts: dict[str, Any]) -> None:
    """Write the files of ``places`` (name in the shipped folder: file) as the shipped folder ``out``."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name, place in places.items():
        shutil.copyfile(place, out / name)
    (out / FACTS_FILE).write_text(json.dumps({"build": build_facts}, indent=1, sort_keys=True))


def own_manifest(encoder: Path, manifest: Path) -> None:
    """Name this cache's copy of the distillation manifest in a shipped encoder's card.

    The card records the manifest it was distilled from by absolute path, which for a shipped
    encoder is the exporting machine's cache; this world's ``manifest`` lists the same recordings
    (the card's ``training_data_hash``).
    """
    from birdsearch.model.encoder import CARD_FILE

    card = json.loads((encoder / CARD_FILE).read_text())
    card["training"]["manifest"] = str(manifest)
    (encoder / CARD_FILE).write_text(json.dumps(card, indent=2))


# --- install -----------------------------------------------------------------------------------


def ships(target: Path) -> bool:
    """Whether the package ships a model for the folder ``target`` (installing it may still fail)."""
    return (SHIPPED_ROOT / target.name / FACTS_FILE).is_file()


def install(
    target: Path,
    seed: int,
    name: str | None = None,
    root: Path | None = None,
    edit: Callable[[Path], None] | None = None,
) -> dict[str, Any] | None:
    """Put the shipped copy of the model folder ``target`` in place; its build facts, or None if none ships.

    ``name``: the shipped folder's name, when it is not ``target``'s (a distilled encoder's).
    ``edit``: called on the assembled folder before it is renamed into place.

    Nothing half-written: the folder is assembled beside ``target`` and renamed into place. A shipped
    copy whose weights do not hash to what the build wrote is skipped with a warning (the caller
    trains instead), as is one stored as a Git LFS pointer.
    """
    source = (root or SHIPPED_ROOT) / (name or target.name)
    if not (source / FACTS_FILE).is_file():
        return None
    facts = json.loads((source / FACTS_FILE).read_text())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for path in sorted(source.iterdir()):
            if path.name == FACTS_FILE:
                continue
            if path.suffix == WEIGHTS_SUFFIX:
                unpack_weights(path, staging / path.name, facts["weights"][path.name], seed)
            else:
                shutil.copyfile(path, staging / path.name)
        bad = [name for name, entry in facts["weights"].items() if sha256(staging / name) != entry["sha256"]]
        if bad:
            log.warning(
                "shipped toy model %s: %s differ from what its build wrote; training it instead",
                source,
                ", ".join(bad),
            )
            return None
        if edit is not None:
            edit(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except (OSError, ValueError, KeyError) as e:
        log.warning("shipped toy model %s cannot be installed (%s); training it instead", source, e)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("toy world: installed the shipped %s", target.name)
    return {**facts["build"], "shipped": True}


def install_file(target: Path) -> dict[str, Any] | None:
    """Copy the shipped file named like ``target`` (a world's metrics) into place; None if none ships."""
    source = SHIPPED_ROOT / target.name
    if not source.is_file():
        return None
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(source, partial)
    partial.replace(target)
    log.info("toy world: installed the shipped %s", target.name)
    return {"shipped": True}


def unpack_weights(packed: Path, out: Path, entry: dict[str, Any], seed: int) -> None:
    """Float16 tensors back to the float32 file the build wrote, token table rows included."""
    import torch
    from safetensors.torch import load_file, save_file

    stored = load_file(packed)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in stored.items():
        if name.endswith(VALUES):
            continue
        if name.endswith(ROWS):
            base = name[: -len(ROWS)]
            table = torch.from_numpy(token_table(seed, *entry["tables"][base]))
            table[tensor] = stored[base + VALUES].float()
            state[base] = table
        else:
            dtype = getattr(torch, entry["dtypes"][name])
            state[name] = tensor.to(dtype)
    ordered = {name: state[name] for name in entry["order"]}
    save_file(ordered, out, metadata=entry["metadata"])


# --- pack ----------------------------------------------------------------------------------------


def pack(source: Path, out: Path, build_facts: dict[str, Any], seed: int, rounding: bool = False) -> None:
    """Write the shipped copy of the model folder ``source`` to ``out``.

    ``rounding``: round the weights to float16 here (a distilled encoder, which nothing downstream
    uses); otherwise they must be float16-exact already (``round_to_half`` in the build).
    """
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    weights = {}
    for path in sorted(source.iterdir()):
        if path.suffix == WEIGHTS_SUFFIX:
            weights[path.name] = pack_weights(path, out / path.name, seed, rounding)
        elif path.is_file():
            shutil.copyfile(path, out / path.name)
    facts = {"build": build_facts, "weights": weights}
    (out / FACTS_FILE).write_text(json.dumps(facts, indent=1, sort_keys=True))


def pack_weights(path: Path, out: Path, seed: int, rounding: bool) -> dict[str, Any]:
    """Store a safetensors file as float16 and changed rows; the entry ``unpack_weights`` reads.

    Unpacks it again at once: without ``rounding`` the result must be ``path`` byte for byte.
    """
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from birdsearch.errors import ConfigError

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()  # None stays None: an empty dict would change the header
        order = list(f.keys())
    state = load_file(path)
    stored: dict[str, torch.Tensor] = {}
    entry: dict[str, Any] = {"metadata": metadata, "order": order, "dtypes": {}, "tables": {}}
    for name, tensor in state.items():
        if rounding and tensor.is_floating_point():
            tensor = tensor.half().to(tensor.dtype)
        if tensor.is_floating_point() and not torch.equal(tensor.half().to(tensor.dtype), tensor):
            raise ConfigError(f"{path}: {name} is not float16-exact; the build must call round_to_half first")
        if name.endswith(TOKEN_TABLE):
            start = torch.from_numpy(token_table(seed, *tensor.shape))
            changed = (tensor != start).any(dim=1).nonzero().flatten()
            stored[name + ROWS] = changed
            stored[name + VALUES] = tensor[changed].half()
            entry["tables"][name] = list(tensor.shape)
            continue
        entry["dtypes"][name] = str(tensor.dtype).removeprefix("torch.")
        stored[name] = tensor.half() if tensor.is_floating_point() else tensor
    save_file(stored, out)
    with tempfile.TemporaryDirectory() as scratch:
        unpacked = Path(scratch) / path.name
        unpack_weights(out, unpacked, entry, seed)
        entry["sha256"] = sha256(unpacked)
    if not rounding and entry["sha256"] != sha256(path):
        raise ConfigError(f"{path}: packing does not round-trip to the same bytes; it cannot ship")
    return entry


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
