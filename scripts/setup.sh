#!/usr/bin/env bash
# Installs the package and its test dependencies. The CPU build of torch is pinned first so that
# pip never pulls a multi-GB CUDA build as a dependency of monai.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check "monai==1.6.1" -e ".[test,phantoms,bundle,docs]"
