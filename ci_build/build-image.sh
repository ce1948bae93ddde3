#!/usr/bin/env bash
# Build and push one architecture image of one Dockerfile target (ci_build/buildspec-build.yml):
#   runtime    <version>-<accelerator>-<arch>-runtime  the server without a model (compile jobs)
#   publisher  <version>-publisher-<arch>               the endpoint inventory publisher
#   serve      <version>-<accelerator>-<arch>           the server with the compiled model in a layer
#
# The CodeBuild project (stacks/image_pipeline.py) sets TARGET IMAGE_TAG IMAGE_VERSION ARCH ACCELERATOR
# MODEL_DEVICE REPOSITORY_URI CACHE_REPOSITORY_URI BUILDKIT_IMAGE and one variable per Dockerfile
# build arg (DLC_ACCOUNT, CUDA_BASE_TAG, ...); CodeBuild sets AWS_REGION.
#
# Tags are immutable: an image that is already published is left alone (bump serving.imageVersion
# to publish a new one). A serving image whose compiled model is not in S3 yet, or was compiled by
# another image version's runtime, is not an error: the build says so and succeeds without
# pushing, and the next pipeline run after that version's compile job builds it.
set -euo pipefail

: "${TARGET:?}" "${IMAGE_TAG:?}" "${IMAGE_VERSION:?}" "${ARCH:?}" "${ACCELERATOR:?}" "${MODEL_DEVICE:?}" "${MODEL_S3_PREFIX:?}"
: "${REPOSITORY_URI:?}" "${CACHE_REPOSITORY_URI:?}" "${BUILDKIT_IMAGE:?}" "${DLC_ACCOUNT:?}" "${DLC_REGION:?}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=ci_build/ecr.sh
source "${here}/ecr.sh"

image="${REPOSITORY_URI}:${IMAGE_TAG}"
if image_exists "${IMAGE_TAG}"; then
  echo "${image} is already published"
  exit 0
fi

build_flags=()
MODEL_MANIFEST_SHA256=""
cache_from=("${ACCELERATOR}-${ARCH}-${TARGET}")
if [ "${TARGET}" = serve ]; then
  manifest_uri="${MODEL_S3_PREFIX}/${MODEL_DEVICE}/manifest.json"
  location="${manifest_uri#s3://}"
  bucket="${location%%/*}"
  key="${location#*/}"
  # Listed, not fetched, to tell "not compiled yet" from an error: the role may list only this
  # prefix, and without s3:ListBucket on the key S3 answers a missing object with 403, not 404.
  # An error (not a missing key) ends the build: set -e.
  listed=$(aws s3api list-objects-v2 --bucket "${bucket}" --prefix "${key}" --query 'Contents[].Key' --output text)
  if ! grep -qxF "${key}" <<<"${listed//$'\t'/$'\n'}"; then
    echo "no compiled model at ${manifest_uri}: run the ${ACCELERATOR} compile job, then release the pipeline again"
    exit 0
  fi
  manifest=$(mktemp)
  credentials=$(mktemp)
  trap 'rm -f "${manifest}" "${credentials}"' EXIT
  aws s3 cp --only-show-errors "${manifest_uri}" - >"${manifest}"
  # The runtime that compiled the model (plan.model_artifacts.IMAGE_VERSION_OPTION): a new image
  # version waits for its own compile job, so an immutable tag never carries an older runtime's model.
  compiled_by=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("options", {}).get("image_version", ""))' "${manifest}")
  if [ "${compiled_by}" != "${IMAGE_VERSION}" ]; then
    echo "the model at ${manifest_uri} was compiled by runtime image version '${compiled_by}', not ${IMAGE_VERSION}: wait for the ${ACCELERATOR} compile job of ${IMAGE_VERSION}, then release the pipeline again"
    exit 0
  fi
  MODEL_MANIFEST_SHA256=$(sha256sum <"${manifest}" | cut -d' ' -f1)
  chmod 600 "${credentials}"
  # The role's short-lived credentials, for the model download only (a BuildKit secret).
  aws configure export-credentials --format process >"${credentials}"
  build_flags+=(--secret "id=aws_credentials,src=${credentials}")
  cache_from+=("${ACCELERATOR}-${ARCH}-runtime")  # the layers below the model: built by the runtime image
fi

registry_login "${REGISTRY}"
registry_login "${DLC_ACCOUNT}.dkr.ecr.${DLC_REGION}.amazonaws.com"
# docker-container driver: the registry cache (--cache-to type=registry) needs it.
docker buildx create --name edge-diffusion --driver docker-container --driver-opt "image=${BUILDKIT_IMAGE}" \
  --use --bootstrap
for ref in "${cache_from[@]}"; do
  build_flags+=(--cache-from "type=registry,ref=${CACHE_REPOSITORY_URI}:${ref}")
done
docker buildx build \
  --file ci_build/Dockerfile \
  --target "${TARGET}" \
  --platform "linux/${ARCH}" \
  --build-arg accelerator="${ACCELERATOR}" \
  --build-arg dlc_account="${DLC_ACCOUNT}" \
  --build-arg dlc_region="${DLC_REGION}" \
  --build-arg cuda_base_tag="${CUDA_BASE_TAG}" \
  --build-arg neuron_base_tag="${NEURON_BASE_TAG}" \
  --build-arg cpu_base_image="${CPU_BASE_IMAGE}" \
  --build-arg model_s3_prefix="${MODEL_S3_PREFIX}" \
  --build-arg model_manifest_sha256="${MODEL_MANIFEST_SHA256}" \
  --build-arg model_id="${MODEL_ID}" \
  --build-arg model_revision="${MODEL_REVISION}" \
  --build-arg aws_region="${AWS_REGION}" \
  --cache-to "type=registry,ref=${CACHE_REPOSITORY_URI}:${ACCELERATOR}-${ARCH}-${TARGET},mode=max,image-manifest=true,oci-mediatypes=true" \
  --provenance=false \
  --tag "${image}" \
  --push \
  "${build_flags[@]}" \
  .
echo "${image} is published"
