#!/usr/bin/env bash
# Build and push one architecture image of one Dockerfile target (ci_build/buildspec-build.yml):
#   runtime    <version>-<accelerator>-<arch>-runtime  the server without a model (compile jobs)
#   publisher  <version>-publisher-<arch>               the endpoint inventory publisher
#   serve      <version>-<accelerator>-<arch>           the server with the compiled model in a layer
#
# The CodeBuild project (stacks/image_pipeline.py) sets TARGET IMAGE_TAG IMAGE_VERSION ARCH ACCELERATOR
# MODEL_DEVICE MODEL_ID MODEL_REVISION MODELS_BASE_URI MODEL_PROMOTIONS REPOSITORY_URI CACHE_REPOSITORY_URI
# BUILDKIT_IMAGE and one variable per Dockerfile build arg (DLC_ACCOUNT, CUDA_BASE_TAG, ...) but the
# two this script computes (MODEL_S3_PREFIX, MODEL_MANIFEST_SHA256); CodeBuild sets AWS_REGION.
#
# Tags are immutable: an image that is already published is left alone (bump serving.imageVersion
# to publish a new one). A serving image is built only from a promoted artifact
# (docs/adr/0016-serving-images-bake-only-promoted-models.md): MODEL_PROMOTIONS, a file of this
# source, names the cluster whose compile it carries and its manifest's sha256. Without a promotion
# the build says so and succeeds without pushing (the next pipeline run after one builds it); a
# promotion whose manifest is gone or differs fails the build: the bucket no longer holds what was
# promoted. Only the promoted cluster's prefix is read.
set -euo pipefail

: "${TARGET:?}" "${IMAGE_TAG:?}" "${IMAGE_VERSION:?}" "${ARCH:?}" "${ACCELERATOR:?}" "${MODEL_DEVICE:?}"
: "${MODEL_ID:?}" "${MODEL_REVISION:?}" "${MODELS_BASE_URI:?}" "${MODEL_PROMOTIONS:?}"
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
MODEL_S3_PREFIX=""
MODEL_MANIFEST_SHA256=""
cache_from=("${ACCELERATOR}-${ARCH}-${TARGET}")
if [ "${TARGET}" = serve ]; then
  # "<cluster> <manifest sha256>", or nothing; a malformed file ends the build (set -e).
  promoted=$(python3 -m runtime.artifacts.promotions lookup "${MODEL_PROMOTIONS}" --model "${MODEL_ID}" \
    --revision "${MODEL_REVISION}" --device "${MODEL_DEVICE}" --image-version "${IMAGE_VERSION}")
  if [ -z "${promoted}" ]; then
    echo "no promoted ${MODEL_DEVICE} model of image version ${IMAGE_VERSION} in ${MODEL_PROMOTIONS}: once the ${ACCELERATOR} compile job of a deployment you trust has published, run python -m runtime.artifacts promote ${MODELS_BASE_URI}/<its cluster>/${MODEL_ID}/${MODEL_REVISION}/${MODEL_DEVICE}/, commit the file and release the pipeline again"
    exit 0
  fi
  read -r cluster promoted_sha256 <<<"${promoted}"
  MODEL_S3_PREFIX="${MODELS_BASE_URI}/${cluster}/${MODEL_ID}/${MODEL_REVISION}"
  manifest_uri="${MODEL_S3_PREFIX}/${MODEL_DEVICE}/manifest.json"
  location="${manifest_uri#s3://}"
  bucket="${location%%/*}"
  key="${location#*/}"
  # Listed, not fetched, to tell "gone" from an error: the role may list only the model's prefixes,
  # and without s3:ListBucket on the key S3 answers a missing object with 403, not 404.
  # An error (not a missing key) ends the build: set -e.
  listed=$(aws s3api list-objects-v2 --bucket "${bucket}" --prefix "${key}" --query 'Contents[].Key' --output text)
  if ! grep -qxF "${key}" <<<"${listed//$'\t'/$'\n'}"; then
    echo "the promoted model ${manifest_uri} is not in the bucket: promote another artifact (python -m runtime.artifacts promote)" >&2
    exit 1
  fi
  manifest=$(mktemp)
  credentials=$(mktemp)
  trap 'rm -f "${manifest}" "${credentials}"' EXIT
  aws s3 cp --only-show-errors "${manifest_uri}" - >"${manifest}"
  MODEL_MANIFEST_SHA256=$(sha256sum <"${manifest}" | cut -d' ' -f1)
  if [ "${MODEL_MANIFEST_SHA256}" != "${promoted_sha256}" ]; then
    echo "the manifest at ${manifest_uri} has sha256 ${MODEL_MANIFEST_SHA256}, not the promoted ${promoted_sha256}: it changed after it was promoted; promote it again if you trust it" >&2
    exit 1
  fi
  # The runtime that compiled the model (plan.model_artifacts.IMAGE_VERSION_OPTION), which the promoted
  # bytes record: an immutable tag never carries another version's model.
  compiled_by=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("options", {}).get("image_version", ""))' "${manifest}")
  if [ "${compiled_by}" != "${IMAGE_VERSION}" ]; then
    echo "the promoted model at ${manifest_uri} was compiled by runtime image version '${compiled_by}', not ${IMAGE_VERSION}: promote the one its ${IMAGE_VERSION} compile job published" >&2
    exit 1
  fi
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
