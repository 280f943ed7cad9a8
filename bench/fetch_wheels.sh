#!/usr/bin/env bash
# Fill bench/wheels (git-ignored) with what bench/gpu_suite.sh installs on a GPU image that lacks it:
# `datasets` and those of its dependencies that such an image (torch, transformers, pyarrow) may not
# have, as wheels for CPython on x86-64 Linux. The suite installs them with `pip install --no-index`.
#
#   bench/fetch_wheels.sh [PYTHON_VERSION ...]     default: 3.10 3.11 3.12 (the image's must be among them)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
versions=("$@")
(( ${#versions[@]} )) || versions=(3.10 3.11 3.12)
# The version tested with this code; pure-Python packages, then the compiled ones (one wheel per Python).
packages=(datasets==5.2.0 dill multiprocess fsspec python-dateutil six tzdata xxhash pandas)
for version in "${versions[@]}"; do
  python -m pip download --quiet --dest "$here/wheels" --no-deps --only-binary=:all: --implementation cp \
    --python-version "$version" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 "${packages[@]}"
done
du -sh "$here/wheels"
