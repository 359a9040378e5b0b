#!/usr/bin/env bash
# One GPU run: every GPU figure of BENCHMARKS.md (bench/gpu.py; its docstring lists the rows).
#
#   bench/gpu.sh wheels            # here, with the package index reachable: fetch the wheels into .whl/
#   bench/gpu.sh [gpu.py flags]    # on the GPU machine: install .whl/ offline if needed, then run
#   bench/gpu.sh --smoke           # every row on the CPU in tiny sizes (a default test runs this)
#
# A bare GPU machine (one H100/H200, 16 cores) is expected to hold Python 3.12 with torch, torchvision,
# transformers, tokenizers, safetensors, huggingface_hub, timm, numpy, pillow, pandas, pyarrow, tqdm,
# httpx, prometheus_client, matplotlib and regex, and nothing of the network. What birdsearch needs
# beyond that travels beside the repository as wheels in .whl/ (about 26 MB; WHEELS below, pinned to
# what the project is tested with), and is installed offline with
#
#   python3 -m pip install --no-index --find-links .whl --no-deps --target /tmp/site .whl/*.whl
#   python3 -m pip install --no-index --no-deps --no-build-isolation --target /tmp/site .
#   export PYTHONPATH=/tmp/site
#
# which this script does when the packages are missing (the second line installs birdsearch itself:
# pyproject.toml's package-dir maps the top-level folders into the package). The official faiss-gpu wheel is too
# large to carry, so search runs on torch (faiss-cpu builds the indexes).
#
# Results: gpu.json, gpu.md (the BENCHMARKS.md rows) and gpu.log in --out (default: $OUT when set,
# else out/gpu). The run takes at most 8 minutes: gpu.py's rows share a 450 s budget.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

WHEELS=(
    faiss-cpu==1.15.1
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
    soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 soxr==1.1.0
    fastapi==0.165.0 starlette==1.10.0 opentelemetry-api==1.45.2 python-multipart==0.0.34 uvicorn==0.54.0
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    pydantic-settings==2.16.3 python-dotenv==1.2.4
)
# What `import` must find for every row (the import names of WHEELS, and birdsearch itself).
MODULES="birdsearch.indexer.search, birdsearch.service.app, open_clip, faiss, soundfile, soxr, fastapi, uvicorn, python_multipart, pydantic_settings"

if [[ ${1:-} == wheels ]]; then
    mkdir -p .whl
    grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    platforms=()
    for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$tag")
    done
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "${WHEELS[@]}"
    du -sh .whl
    exit 0
fi

# The repository root holds a birdsearch/ folder without model/, indexer/ and the others (pyproject.toml maps
# them in): run from here, Python would import that folder first and miss them, unless the current
# directory stays off sys.path (Python 3.11+), in this process and the servers and workers it starts.
export PYTHONSAFEPATH=1
if ! "$PYTHON" -c "import ${MODULES}" 2>/dev/null; then
    if [[ ! -d .whl ]]; then
        echo "missing packages and no .whl/ folder: run 'bench/gpu.sh wheels' where the package index is reachable" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --find-links .whl --no-deps --no-compile --target /tmp/site .whl/*.whl
    "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    "$PYTHON" -c "import ${MODULES}"
fi

out=(--out "${OUT:-out/gpu}")
for arg in "$@"; do
    [[ $arg == --out || $arg == --out=* ]] && out=()
done
exec "$PYTHON" bench/gpu.py "${out[@]}" "$@"
