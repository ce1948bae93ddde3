#!/usr/bin/env bash
# Join architecture images into one multi-arch manifest list (ci_build/buildspec-manifest.yml):
#   LIST_TAG     e.g. 1.2.3-cpu-runtime, 1.2.3-cpu or 1.2.3-publisher
#   SOURCE_TAGS  its architecture images, space-separated (1.2.3-cpu-amd64-runtime 1.2.3-cpu-arm64-runtime)
#   IF_MISSING   what a missing architecture image means: `fail` (its build should have pushed it)
#                or `skip` (a serving image waits for its compile: the list is created by the
#                pipeline run after the compile)
# The CodeBuild project (stacks/image_pipeline.py) sets them and REPOSITORY_URI.
# Tags are immutable: a manifest list that is already published is left alone.
set -euo pipefail

: "${REPOSITORY_URI:?}" "${LIST_TAG:?}" "${SOURCE_TAGS:?}" "${IF_MISSING:?}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=ci_build/ecr.sh
source "${here}/ecr.sh"

list="${REPOSITORY_URI}:${LIST_TAG}"
if image_exists "${LIST_TAG}"; then
  echo "${list} is already published"
  exit 0
fi
sources=()
missing=()
for tag in ${SOURCE_TAGS}; do
  sources+=("${REPOSITORY_URI}:${tag}")
  image_exists "${tag}" || missing+=("${tag}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "${IF_MISSING}" = skip ]; then
    echo "${list} not created yet: ${missing[*]} not published (no compiled model); the pipeline run after the compile creates it"
    exit 0
  fi
  echo "${list}: ${missing[*]} not published, though its build succeeded" >&2
  exit 1
fi
registry_login "${REGISTRY}"
docker buildx imagetools create --tag "${list}" "${sources[@]}"
docker buildx imagetools inspect "${list}"
echo "${list} is published"
