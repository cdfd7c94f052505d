"""Computes the wheel's package list; all other packaging configuration is in pyproject.toml.

The import package ``tffprod`` is assembled from sibling source roots by
``[tool.setuptools.package-dir]`` (``tffprod/``, and ``executors/``, ``registry/``, ``cli/``,
``examples/`` as ``tffprod.executors`` etc.). ``[tool.setuptools.packages.find]`` cannot put a
prefix on the packages it finds under a root, so they are found here instead: each mapped root
and every directory with an ``__init__.py`` below it. tests/unit/test_wheel.py checks the result.
"""

import sys

from setuptools import find_packages, setup

if sys.version_info >= (3, 11):
    import tomllib
else:  # setuptools vendors tomli and puts it on sys.path
    import tomli as tomllib

with open("pyproject.toml", "rb") as f:
    PACKAGE_DIR: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]

setup(packages=[f"{name}.{sub}" if sub else name
                for name, root in PACKAGE_DIR.items() for sub in ["", *find_packages(root)]])
