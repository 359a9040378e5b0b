"""What is installed is what runs: the wheel, installed outside the source tree, serves the page.

Every other test imports the editable install, which reads the repository's folders, so a file the
wheel leaves out (the web page's static files, the shipped toy models, the bundled bird table) is
never missed there. This test builds the wheel from a copy of the repository (no stale ``build/``),
installs it into a fresh virtual environment whose only other path is the dependencies' site folder
(the editable install's import hook lives in a ``.pth`` file that is then never run), checks that
every file inside the source package folders is inside the installed package, and starts
``birdsearch serve`` from that install, on loopback, from a folder outside the repository.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from importlib.util import find_spec
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Repository folders that are not part of the package (the wheel is built from a copy without them).
NOT_PACKAGE = {".git", ".venv", "tests", "docs", "bench", "docker", "build", "dist", ".cache", "out"}  # fmt: skip
BUILD_LEFTOVERS = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def copy_of_repository(target: Path) -> Path:
    def ignore(folder: str, names: list[str]) -> set[str]:
        top = {n for n in names if n in NOT_PACKAGE} if Path(folder) == ROOT else set()
        return top | BUILD_LEFTOVERS(folder, names)

    shutil.copytree(ROOT, target, ignore=ignore)
    return target


def run(*argv: str | Path, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment holding the built wheel, with this environment's dependencies beside it.

    Built with this environment's setuptools (no build isolation, nothing downloaded)."""
    tmp = tmp_path_factory.mktemp("installed")
    source = copy_of_repository(tmp / "source")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "--wheel-dir", tmp / "wheels", source)  # fmt: skip
    (wheel,) = (tmp / "wheels").glob("birdsearch-*.whl")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(run(python, "-c", purelib).stdout.strip())
    # A plain path line: the dependencies' folder joins sys.path, but its .pth files (the editable
    # install's import hook among them) are not run.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def installed_python(venv: Path, code: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    env.pop("PYTHONPATH", None)
    return run(venv / "bin" / "python", "-c", code, cwd=cwd, env=env).stdout


def installed_packages(venv: Path, cwd: Path) -> dict[str, Path]:
    """Each package of the install (by name) and its folder there, read by the installed interpreter."""
    code = (
        "import birdsearch, importlib, pkgutil, sys\n"
        "fail = lambda name: sys.exit(f'cannot import {name}')\n"
        "for info in pkgutil.walk_packages(birdsearch.__path__, 'birdsearch.', onerror=fail):\n"
        "    if info.ispkg:\n"
        "        print(info.name, importlib.util.find_spec(info.name).submodule_search_locations[0])\n"
        "print('birdsearch', birdsearch.__path__[0])\n"
    )
    lines = installed_python(venv, code, cwd).splitlines()
    return {name: Path(folder) for name, folder in (line.split(" ", 1) for line in lines)}


def data_files(folder: Path) -> set[str]:
    """Every file under ``folder`` (non-package subfolders such as ``static/`` included), relative."""
    skip = {"__pycache__"}
    return {
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(folder).parts) and p.suffix != ".pyc"
    }


def test_every_file_of_the_source_packages_is_installed(installed, tmp_path):
    packages = installed_packages(installed, tmp_path)
    assert {"birdsearch.model", "birdsearch.indexer", "birdsearch.service", "birdsearch.toy"} <= set(packages)
    for name, folder in packages.items():
        assert installed in folder.parents, f"{name} was imported from {folder}, not from the install"
        spec = find_spec(name)  # this environment's editable install: the repository's folder
        assert spec is not None and spec.submodule_search_locations, name
        source = Path(spec.submodule_search_locations[0])
        assert ROOT in source.parents, f"{name}: the editable install maps it to {source}"
        missing = data_files(source) - data_files(folder)
        assert not missing, f"the wheel leaves out {sorted(missing)[:10]} of {name} ({source})"


def test_the_bundled_tables_and_shipped_models_load_from_the_install(installed, tmp_path):
    code = (
        "from birdsearch.indexer.taxonomy import bird_table\n"
        "from birdsearch.toy.shipped import SHIPPED_ROOT\n"
        "by_scientific, _, _ = bird_table()\n"
        "print(len(by_scientific), len(list(SHIPPED_ROOT.glob('*/shipped.json'))), SHIPPED_ROOT)\n"
    )
    from birdsearch.indexer.taxonomy import bird_table  # the repository's, through the editable install

    species, shipped, root = installed_python(installed, code, tmp_path).split()
    assert int(species) == len(bird_table()[0]) > 0
    assert int(shipped) == len(list((ROOT / "birdsearch" / "toy" / "shipped").glob("*/shipped.json"))) > 0
    assert installed in Path(root).parents


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_from_the_install_loads_the_page(installed, tmp_path):
    """`birdsearch serve` (the installed console script), from a folder outside the repository."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BIRDSEARCH_", "PYTHONPATH"))}
    env.update(
        PYTHONSAFEPATH="1",
        BIRDSEARCH_CACHE=str(tmp_path / "cache"),
        BIRDSEARCH_INDEX_ROOT=str(tmp_path / "index"),  # none published yet: the page still loads
        BIRDSEARCH_STUDENT="toy:tiny",  # the shipped toy model, installed into the cache from the wheel
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [installed / "bin" / "birdsearch", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        page = None
        deadline = time.monotonic() + 120
        while page is None and time.monotonic() < deadline:
            assert server.poll() is None, f"serve exited: {log_path.read_text()[-3000:]}"
            try:
                page = httpx.get(f"{base}/", timeout=5)
            except httpx.TransportError:
                time.sleep(0.3)
        assert page is not None, f"no answer within 120 s: {log_path.read_text()[-3000:]}"
        assert page.status_code == 200 and "<html" in page.text.lower()
        for asset in ("app.js", "style.css"):
            assert httpx.get(f"{base}/static/{asset}", timeout=5).status_code == 200, asset
        version = httpx.get(f"{base}/version", timeout=5).json()
        assert version["models"]["cascade"]["id"] == "toy:tiny"
        assert "installed the shipped student" in log_path.read_text()  # not one trained on the spot
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
