"""Maps the top-level folders the project's owner asked for onto one installed package.

model/, indexer/ and service/ install as birdsearch.model, birdsearch.indexer and
birdsearch.service, so that nothing claims generic top-level import names such as `model`.
Everything else is in pyproject.toml.
"""

from setuptools import find_packages, setup

PACKAGE_DIRS = {
    "birdsearch": "birdsearch",
    "birdsearch.model": "model",
    "birdsearch.indexer": "indexer",
    "birdsearch.service": "service",
}


def all_packages() -> list[str]:
    packages = []
    for package, folder in PACKAGE_DIRS.items():
        packages.append(package)
        packages += [f"{package}.{sub}" for sub in find_packages(folder)]
    return packages


setup(packages=all_packages(), package_dir=PACKAGE_DIRS)
