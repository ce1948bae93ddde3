#!/usr/bin/env bash
# Build a Bottlerocket data-volume EBS snapshot that holds the serving images, so nodes restored
# from it start pods without pulling 10-20 GB images (ci_build/buildspec-snapshot.yml).
#
# The method of aws-samples/bottlerocket-images-cache (snapshot.sh, MIT-0): launch a Bottlerocket
# instance reachable through SSM, pull the images into its data volume (/dev/xvdb) with the
# admin container's `ctr`, stop it, snapshot the data volume, terminate it. Written anew for this
# pipeline: no CloudFormation stack per run, the instance in the pipeline's isolated builder
# subnet, IMDSv2 required, every volume encrypted, the instance terminated on every exit path,
# and nothing rebuilt when a snapshot of exactly these images exists.
#
# The CodeBuild project (stacks/snapshot_builder.py) sets:
#   REPOSITORY_URI     the image repository
#   IMAGE_VERSION      serving.imageVersion (a snapshot tag)
#   SERVING_IMAGES     "<tag>=<platform> ...", e.g. "1.2.3-nvidia=linux/amd64 1.2.3-cpu=linux/arm64"
#   AMI_PARAMETER      public SSM parameter of the Bottlerocket aws-k8s AMI
#   INSTANCE_TYPE SUBNET_ID SECURITY_GROUP_ID INSTANCE_PROFILE DATA_VOLUME_GIB
#   SNAPSHOT_PARAMETER SSM parameter the snapshot id is written to
#   PURPOSE_TAG_KEY PURPOSE_TAG_VALUE  the tag the project's IAM policy requires on what it touches
#   POLL_SECONDS SSM_ONLINE_TIMEOUT_S COMMAND_TIMEOUT_S SNAPSHOT_TIMEOUT_S
# CodeBuild sets AWS_REGION. The last line of the output is the snapshot id.
set -euo pipefail

: "${REPOSITORY_URI:?}" "${IMAGE_VERSION:?}" "${SERVING_IMAGES:?}" "${AMI_PARAMETER:?}" "${INSTANCE_TYPE:?}"
: "${SUBNET_ID:?}" "${SECURITY_GROUP_ID:?}" "${INSTANCE_PROFILE:?}" "${DATA_VOLUME_GIB:?}" "${SNAPSHOT_PARAMETER:?}"
: "${PURPOSE_TAG_KEY:?}" "${PURPOSE_TAG_VALUE:?}" "${POLL_SECONDS:?}" "${SSM_ONLINE_TIMEOUT_S:?}"
: "${COMMAND_TIMEOUT_S:?}" "${SNAPSHOT_TIMEOUT_S:?}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=ci_build/ecr.sh
source "${here}/ecr.sh"
export AWS_PAGER=""
CONTENT_TAG_KEY="edge-diffusion.aws/images-sha256"
VERSION_TAG_KEY="edge-diffusion.aws/image-version"
CTR="apiclient exec admin sheltie ctr -a /run/containerd/containerd.sock -n k8s.io"

# digest_of TAG: the digest of REPOSITORY_URI:TAG; status 1 if it is not published, 2 on any other error
# (it runs in a command substitution, where `exit` would only leave the subshell).
digest_of() {
  local out
  if out=$(aws ecr describe-images --repository-name "${REPOSITORY_NAME}" --image-ids "imageTag=$1" \
      --query 'imageDetails[0].imageDigest' --output text 2>&1); then
    echo "${out}"
    return 0
  fi
  if grep -q ImageNotFoundException <<<"${out}"; then
    return 1
  fi
  echo "${out}" >&2
  return 2
}

# publish SNAPSHOT_ID: record it in the SSM parameter and say how to use it; the id is the last line.
publish() {
  aws ssm put-parameter --name "${SNAPSHOT_PARAMETER}" --value "$1" --type String --overwrite >/dev/null
  echo "${SNAPSHOT_PARAMETER} = $1: set nodeImage.dataVolumeSnapshotId=$1 (with nodeImage.family=bottlerocket)"
  echo "$1"
}

# 1. Every serving image must be published; the snapshot's identity is the set of tag@digest=platform.
pulls=()
lines=()
for entry in ${SERVING_IMAGES}; do
  tag="${entry%%=*}"
  platform="${entry#*=}"
  found=0
  digest=$(digest_of "${tag}") || found=$?
  if [ "${found}" -eq 1 ]; then
    echo "${REPOSITORY_URI}:${tag} not published yet: the data-volume snapshot waits for every serving image; it is built by the pipeline run after the compile"
    exit 0
  elif [ "${found}" -ne 0 ]; then
    exit "${found}"
  fi
  pulls+=("${tag}=${platform}")
  lines+=("${tag}@${digest}=${platform}")
done
content=$(printf '%s\n' "${lines[@]}" | LC_ALL=C sort | sha256sum | cut -d' ' -f1)

# 2. A completed snapshot of exactly these images: nothing to build (tags are immutable).
existing=$(aws ec2 describe-snapshots --owner-ids self \
  --filters "Name=tag:${CONTENT_TAG_KEY},Values=${content}" "Name=status,Values=completed" \
  --query 'Snapshots[0].SnapshotId' --output text)
if [ -n "${existing}" ] && [ "${existing}" != None ]; then
  echo "snapshot ${existing} already holds these images"
  publish "${existing}"
  exit 0
fi

ami=$(aws ssm get-parameter --name "${AMI_PARAMETER}" --query Parameter.Value --output text)
# The project's role may only pull: so may this token, which the instance's ctr uses.
token=$(aws ecr get-login-password)

# 3. Launch. From here on the instance is terminated however the script ends.
instance_id=""
cleanup() {
  local status=$?
  if [ -n "${instance_id}" ]; then
    aws ec2 terminate-instances --instance-ids "${instance_id}" >/dev/null
    echo "instance ${instance_id} terminated"
  fi
  exit "${status}"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

tags="{Key=${PURPOSE_TAG_KEY},Value=${PURPOSE_TAG_VALUE}},{Key=Name,Value=edge-diffusion-data-volume-${IMAGE_VERSION}}"
devices="[{\"DeviceName\":\"/dev/xvda\",\"Ebs\":{\"Encrypted\":true,\"DeleteOnTermination\":true,\"VolumeType\":\"gp3\"}},"
devices+="{\"DeviceName\":\"/dev/xvdb\",\"Ebs\":{\"Encrypted\":true,\"DeleteOnTermination\":true,\"VolumeType\":\"gp3\","
devices+="\"VolumeSize\":${DATA_VOLUME_GIB},\"Iops\":4000,\"Throughput\":1000}}]"
# Bottlerocket settings (TOML): the admin container runs `ctr` in the host's containerd.
user_data=$'[settings.host-containers.admin]\nenabled = true\n'
instance_id=$(aws ec2 run-instances \
  --image-id "${ami}" \
  --instance-type "${INSTANCE_TYPE}" \
  --count 1 \
  --subnet-id "${SUBNET_ID}" \
  --security-group-ids "${SECURITY_GROUP_ID}" \
  --iam-instance-profile "Name=${INSTANCE_PROFILE}" \
  --metadata-options "HttpTokens=required,HttpEndpoint=enabled,HttpPutResponseHopLimit=1" \
  --block-device-mappings "${devices}" \
  --user-data "${user_data}" \
  --tag-specifications "ResourceType=instance,Tags=[${tags}]" "ResourceType=volume,Tags=[${tags}]" \
    "ResourceType=network-interface,Tags=[${tags}]" \
  --query 'Instances[0].InstanceId' --output text)
echo "instance ${instance_id} launched from ${ami}"
aws ec2 wait instance-running --instance-ids "${instance_id}"

deadline=$((SECONDS + SSM_ONLINE_TIMEOUT_S))
until [ "$(aws ssm describe-instance-information --filters "Key=InstanceIds,Values=${instance_id}" \
    --query 'InstanceInformationList[0].PingStatus' --output text)" = Online ]; do
  if [ "${SECONDS}" -ge "${deadline}" ]; then
    echo "instance ${instance_id} did not come online in SSM within ${SSM_ONLINE_TIMEOUT_S} s" >&2
    exit 1
  fi
  sleep "${POLL_SECONDS}"
done

# run_on_instance DESCRIPTION COMMAND: run COMMAND through SSM and wait for it; its error output and a failure otherwise.
run_on_instance() {
  local command_id status deadline parameters
  parameters=$(printf '{"commands":["%s"],"executionTimeout":["%s"]}' "$2" "${COMMAND_TIMEOUT_S}")
  command_id=$(aws ssm send-command --instance-ids "${instance_id}" --document-name AWS-RunShellScript \
    --comment "$1" --parameters "${parameters}" --query Command.CommandId --output text)
  deadline=$((SECONDS + COMMAND_TIMEOUT_S + 300))
  while :; do
    if ! status=$(aws ssm get-command-invocation --command-id "${command_id}" --instance-id "${instance_id}" \
        --query Status --output text 2>&1); then
      grep -q InvocationDoesNotExist <<<"${status}" || { echo "${status}" >&2; exit 1; }
      status=Pending  # not delivered to the agent yet
    fi
    case "${status}" in
      Success) echo "$1: done"; return 0 ;;
      Pending | InProgress | Delayed) ;;
      *)
        echo "$1: ${status}" >&2
        aws ssm get-command-invocation --command-id "${command_id}" --instance-id "${instance_id}" \
          --query StandardErrorContent --output text >&2
        exit 1
        ;;
    esac
    if [ "${SECONDS}" -ge "${deadline}" ]; then
      echo "$1: no result within $((COMMAND_TIMEOUT_S + 300)) s" >&2
      exit 1
    fi
    sleep "${POLL_SECONDS}"
  done
}

# 4. Pull into the data volume (kubelet stopped: it would garbage-collect images it does not run).
run_on_instance "stop kubelet" "apiclient exec admin sheltie systemctl stop kubelet"
for entry in "${pulls[@]}"; do
  tag="${entry%%=*}"
  platform="${entry#*=}"
  run_on_instance "pull ${tag} ${platform}" \
    "${CTR} images pull --label io.cri-containerd.image=managed --platform ${platform} --user AWS:${token} ${REPOSITORY_URI}:${tag}"
done

# 5. Stop, snapshot the data volume, wait for the snapshot.
aws ec2 stop-instances --instance-ids "${instance_id}" >/dev/null
aws ec2 wait instance-stopped --instance-ids "${instance_id}"
volume_id=$(aws ec2 describe-instances --instance-ids "${instance_id}" \
  --query "Reservations[0].Instances[0].BlockDeviceMappings[?DeviceName=='/dev/xvdb'].Ebs.VolumeId" --output text)
snapshot_id=$(aws ec2 create-snapshot --volume-id "${volume_id}" \
  --description "Bottlerocket data volume with the ${IMAGE_VERSION} serving images" \
  --tag-specifications "ResourceType=snapshot,Tags=[${tags},{Key=${CONTENT_TAG_KEY},Value=${content}},{Key=${VERSION_TAG_KEY},Value=${IMAGE_VERSION}}]" \
  --query SnapshotId --output text)
echo "snapshot ${snapshot_id} of ${volume_id} started"
deadline=$((SECONDS + SNAPSHOT_TIMEOUT_S))
while :; do
  state=$(aws ec2 describe-snapshots --snapshot-ids "${snapshot_id}" --query 'Snapshots[0].State' --output text)
  case "${state}" in
    completed) break ;;
    pending) ;;
    *) echo "snapshot ${snapshot_id}: ${state}" >&2; exit 1 ;;
  esac
  if [ "${SECONDS}" -ge "${deadline}" ]; then
    echo "snapshot ${snapshot_id} not completed within ${SNAPSHOT_TIMEOUT_S} s" >&2
    exit 1
  fi
  sleep "${POLL_SECONDS}"
done
aws ec2 terminate-instances --instance-ids "${instance_id}" >/dev/null
echo "instance ${instance_id} terminated"
instance_id=""
publish "${snapshot_id}"
