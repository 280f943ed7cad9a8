"""The part of the build that pyproject.toml cannot say: every package under nmt/ found automatically,
and the command line's directory cli/ installed as the package nmt_cli (a top-level `cli` would
clash with other projects' once installed)."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["nmt", "nmt.*"]), "nmt_cli"], package_dir={"nmt_cli": "cli"})
