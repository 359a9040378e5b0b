"""Indexing throughput: the naive loop against birdsearch's pipeline, from JPEG files to stored vectors.

Naive (what a user writes without this project): for each file, PIL open -> the teacher's own
preprocess -> forward at batch 1 (fp32 on the CPU, the model's default dtype on a GPU) -> collect,
then save the vectors. Pipeline: ``birdsearch.indexer.pipeline.run_index`` (hashing, decoding
workers, batched forward, bf16 on CUDA, resumable shards, SQLite, FAISS, atomic publish), timed
end to end including the teacher's load.

    python bench/index_throughput.py                      # small ViT here (CPU)
    python bench/index_throughput.py --model full --images 20000 --naive-images 500 --device cuda

``--model small`` is a small open_clip ViT (64 px, 4 layers: toy-world size); ``full`` is
BioCLIP-2's architecture (ViT-L/14, 224 px) with random weights, which times like the real one;
``--teacher SPEC`` benchmarks any teacher (e.g. ``toy``). Photos are synthetic 500x375 JPEGs
(smooth shapes plus noise, quality 90), the size performance.md's decode figure uses.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

SMALL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}


def make_photos(folder: Path, count: int, size: tuple[int, int] = (500, 375), seed: int = 0) -> None:
    """Photo-like JPEGs in ``folder/<species>/``: blurred ellipses on a gradient, with sensor noise."""
    rng = np.random.default_rng(seed)
    species = ["Turdus migratorius", "Junco hyemalis", "Passer domesticus", "Sayornis nigricans"]
    w, h = size
    ramp = np.linspace(0, 1, w)[None, :, None] * np.ones((h, 1, 3))
    for i in range(count):
        base = (ramp * rng.uniform(60, 200, 3) + rng.uniform(0, 55, 3)).astype(np.uint8)
        img = Image.fromarray(base)
        draw = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = rng.integers(0, w), rng.integers(0, h)
            r = rng.integers(10, 120)
            draw.ellipse(
                (x - r, y - r // 2, x + r, y + r // 2), fill=tuple(int(c) for c in rng.integers(0, 256, 3))
            )
        img = img.filter(ImageFilter.GaussianBlur(2))
        noisy = np.clip(np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255).astype(
            np.uint8
        )
        target = folder / species[i % len(species)] / f"photo{i:06d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(noisy).save(target, quality=90)


def teacher_spec(args: argparse.Namespace, workdir: Path) -> str:
    from birdsearch.model.standins import BIOCLIP2_MODEL_CFG, build_teacher, save_teacher

    if args.teacher:
        return args.teacher
    cfg = SMALL_CFG if args.model == "small" else BIOCLIP2_MODEL_CFG
    return f"local-dir:{save_teacher(build_teacher(cfg), workdir / f'teacher-{args.model}', cfg)}"


def naive(spec: str, files: list[Path], device: str, out: Path) -> float:
    """The plain loop; returns images/s (model load excluded, saving included)."""
    import torch.nn.functional as F

    from birdsearch.model.teacher import Teacher

    teacher = Teacher.load(spec, device)
    model, preprocess = teacher.model, teacher.preprocess
    with torch.inference_mode():
        model.encode_image(
            preprocess(Image.open(files[0]).convert("RGB"))[None].to(teacher.device)
        )  # warm-up
        if teacher.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        vectors = []
        for file in files:
            x = preprocess(Image.open(file).convert("RGB"))[None].to(teacher.device)
            vectors.append(F.normalize(model.encode_image(x).float(), dim=-1).cpu().numpy())
        np.save(out, np.concatenate(vectors))
        elapsed = time.perf_counter() - start
    return len(files) / elapsed


def stage_costs(spec: str, files: list[Path], device: str, batch: int) -> dict[str, float]:
    """Milliseconds per photo of each step, one core, in this process: what bounds any pipeline here."""
    from birdsearch.indexer.embed import ImageEmbedder
    from birdsearch.indexer.images import open_image, thumbnail_jpeg

    embedder = ImageEmbedder(spec, device)
    blobs = [f.read_bytes() for f in files[:50]]
    images = [open_image(b) for b in blobs]
    pixels = torch.from_numpy(np.stack([embedder.split.to_uint8(images[0])] * batch))

    def per_photo(fn, items) -> float:
        fn(items[0])
        start = time.perf_counter()
        for item in items:
            fn(item)
        return 1000 * (time.perf_counter() - start) / len(items)

    def sync() -> None:
        if embedder.device.type == "cuda":
            torch.cuda.synchronize()

    def model_ms(size: int) -> float:
        embedder.embed(pixels[:size])
        sync()
        start = time.perf_counter()
        for _ in range(max(2, 64 // size)):
            embedder.embed(pixels[:size])
        sync()
        return 1000 * (time.perf_counter() - start) / (max(2, 64 // size) * size)

    return {
        "decode (PIL, EXIF, RGB)": per_photo(open_image, blobs),
        "resize + crop to the model's input (PIL)": per_photo(embedder.split.to_uint8, images),
        "256 px thumbnail (resize + JPEG)": per_photo(lambda im: thumbnail_jpeg(im, 256), images),
        "model, batch 1": model_ms(1),
        f"model, batch {batch}": model_ms(batch),
    }


def pipeline(
    spec: str,
    gallery: Path,
    out: Path,
    args: argparse.Namespace,
    thumbnails: int,
    jpeg_decode: str = "auto",
    model_threads: int = 0,
) -> tuple[float, float]:
    """run_index end to end (teacher load included); returns (images/s end to end, images/s embedding stage)."""
    from birdsearch.indexer.pipeline import IndexConfig, run_index

    config = IndexConfig(
        gallery=gallery,
        out=out,
        teacher=spec,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        thumbnail_size=thumbnails,
        jpeg_decode=jpeg_decode,
        model_threads=model_threads,
        progress=False,
    )
    start = time.perf_counter()
    summary = run_index(config)
    elapsed = time.perf_counter() - start
    assert summary.count == args.images and not summary.failed, summary.render()
    return args.images / elapsed, summary.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("small", "full"), default="small")
    parser.add_argument("--teacher", default=None, help="a teacher spec instead of --model")
    parser.add_argument("--images", type=int, default=2000, help="photos indexed by the pipeline")
    parser.add_argument("--naive-images", type=int, default=300, help="photos run through the naive loop")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    from birdsearch.cpus import available_cpus
    from birdsearch.toy.plugin import register as register_toy

    register_toy()  # `--teacher toy` resolves as under the console script
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_photos(work / "gallery", args.images)
        files = sorted((work / "gallery").rglob("*.jpg"))[: args.naive_images]
        spec = teacher_spec(args, work)
        device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
        device = "cpu" if device == "auto" else device
        naive_rate = naive(spec, files, device, work / "naive.npy")
        costs = stage_costs(
            spec, files, device, args.batch_size or (256 if device.startswith("cuda") else 32)
        )
        with_thumbs = pipeline(spec, work / "gallery", work / "index-thumbs", args, thumbnails=256)
        no_thumbs = pipeline(spec, work / "gallery", work / "index", args, thumbnails=0)
        rows = [
            ("pipeline, thumbnails off", no_thumbs),
            ("pipeline, 256 px thumbnails (default)", with_thumbs),
        ]
        if not device.startswith("cuda"):  # the model on every core, as before its threads were sized
            every_core = pipeline(
                spec,
                work / "gallery",
                work / "index-cores",
                args,
                thumbnails=0,
                model_threads=available_cpus(),
            )
            rows.append(("pipeline, thumbnails off, torch on every core (--model-threads)", every_core))
        if device.startswith("cuda"):  # the GPU decodes JPEGs by default: the workers' PIL path beside it
            pil = pipeline(
                spec, work / "gallery", work / "index-pil", args, thumbnails=0, jpeg_decode="workers"
            )
            rows.append(("pipeline, thumbnails off, JPEGs decoded by PIL in the workers", pil))
    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"{platform.processor() or 'CPU'}"
    print(f"machine: {where}, {os.cpu_count()} CPU cores, torch {torch.__version__}, device {device}")
    print(f"teacher: {spec if args.teacher else args.model}; {args.images} photos 500x375 JPEG")
    print("| path | images/s | vs naive |")
    print("|---|---:|---:|")
    print(f"| naive loop (PIL, preprocess, batch 1), {len(files)} photos | {naive_rate:.1f} | 1.0x |")
    for label, (total, stage) in rows:
        print(f"| {label}: end to end | {total:.1f} | {total / naive_rate:.1f}x |")
        print(f"| {label}: embedding stage | {stage:.1f} | {stage / naive_rate:.1f}x |")
    print("\nWhat one photo costs in one process (ms; the model rows use all of torch's threads):\n")
    print("| step | ms/photo |")
    print("|---|---:|")
    for step, ms in costs.items():
        print(f"| {step} | {ms:.2f} |")


if __name__ == "__main__":
    main()
