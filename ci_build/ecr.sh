# shellcheck shell=bash
# ECR helpers for ci_build/build-image.sh and ci_build/publish-manifests.sh (sourced, not run).
# Expects REPOSITORY_URI (<account>.dkr.ecr.<region>.amazonaws.com/<name>).

# shellcheck disable=SC2034  # REGISTRY is read by the scripts that source this file
REGISTRY="${REPOSITORY_URI%%/*}"
REPOSITORY_NAME="${REPOSITORY_URI#*/}"

# image_exists TAG: 0 if REPOSITORY_URI:TAG is published, 1 if not; any other error ends the script.
image_exists() {
  local out
  if out=$(aws ecr describe-images --repository-name "${REPOSITORY_NAME}" --image-ids "imageTag=$1" \
      --query 'imageDetails[0].imageDigest' --output text 2>&1); then
    return 0
  fi
  if grep -q ImageNotFoundException <<<"${out}"; then
    return 1
  fi
  echo "${out}" >&2
  exit 1
}

# registry_login REGISTRY: docker login with the CodeBuild role's ECR token.
registry_login() {
  aws ecr get-login-password | docker login --username AWS --password-stdin "$1"
}
