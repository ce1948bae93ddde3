#!/usr/bin/env bash
# Install a requirements file on top of an AWS Deep Learning Container without replacing the
# framework builds the DLC ships (the CUDA torch build; torch-neuronx, neuronx-cc and the numpy
# they are built against). Those installed versions become pip constraints, and `torch==` pins in
# the requirements file (runtime/requirements.txt pins the CPU build) are left out, so pip fails
# loudly instead of swapping the DLC's torch for a PyPI wheel.
#
#   bash ci_build/pip-install-on-dlc.sh REQUIREMENTS_FILE
set -euo pipefail

requirements=${1:?usage: pip-install-on-dlc.sh REQUIREMENTS_FILE}
framework='^(torch|torchvision|torchaudio|torch-neuronx|torch-xla|neuronx-cc|libneuronxla|neuronx-distributed|numpy)=='
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python -m pip list --format=freeze | grep -iE "$framework" >"$work/constraints.txt" || true
if ! grep -qiE '^torch==' "$work/constraints.txt"; then
  echo "pip-install-on-dlc: no torch in this base image; is it a Deep Learning Container?" >&2
  exit 1
fi
grep -viE '^torch([<>=!~ ;[]|$)' "$requirements" >"$work/requirements.txt" || true

echo "pip-install-on-dlc: keeping the base image's framework packages:"
sed 's/^/  /' "$work/constraints.txt"
python -m pip install --no-cache-dir --constraint "$work/constraints.txt" --requirement "$work/requirements.txt"
