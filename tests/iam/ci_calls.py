"""What the image build's command lines ask of AWS: each ``aws`` and ``docker`` call the stubs of
``tests.ci_build.buildspec_runner`` record, as the (action, resource, context) AWS authorizes.

- ``aws ecr get-login-password`` -> ecr:GetAuthorizationToken on ``*``; ``aws ecr describe-images``
  -> ecr:DescribeImages on the repository; ``aws s3api list-objects-v2`` -> s3:ListBucket with
  ``s3:prefix``; ``aws s3 cp s3://...`` -> s3:GetObject (and s3:ListBucket without a prefix when the
  key is missing, as S3 answers 403 otherwise); ``aws configure export-credentials`` and
  ``aws --version`` call nothing.
- ``docker buildx build`` -> the ECR push actions on the ``--tag`` and ``--cache-to`` repositories
  and the pull actions on ``--cache-from`` and on every ECR base image the target's stages start
  from (read from the Dockerfile with the build's ``--build-arg`` values), and the ``aws s3 sync`` a
  stage runs with the build's credentials secret (ListBucket with the prefix, GetObject per key
  in the stub's bucket). ``docker buildx imagetools create``/``inspect`` -> pulls of the sources,
  push of the list. Actions per operation: the ECR User Guide, "Required IAM permissions for pushing
  an image" and "... pulling an image".

Anything else (the data-volume snapshot's ``aws ec2``/``aws ssm`` calls among them) raises
:class:`~tests.iam.policy.UnmodeledError`: the test reports it instead of passing it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.iam.policy import Request, UnmodeledError

ECR_PULL: Final = ("ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer")
ECR_PUSH: Final = (
    "ecr:BatchCheckLayerAvailability",
    "ecr:BatchGetImage",
    "ecr:CompleteLayerUpload",
    "ecr:InitiateLayerUpload",
    "ecr:PutImage",
    "ecr:UploadLayerPart",
)
ECR_HOST: Final = re.compile(r"^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com/([^:@]+)")
SECURE: Final = {"aws:securetransport": ("true",)}
S3_LIST_KEYS: Final = frozenset({"s3:prefix", "s3:delimiter", "s3:max-keys"})


@dataclass(frozen=True)
class Context:
    """What the command lines of one build resolve against."""

    account: str  # the role's
    region: str  # AWS_REGION of the build
    bucket_root: Path  # the stub's model bucket(s): <root>/<bucket>/<key>
    dockerfile: Path


def _opt(args: Sequence[str], name: str) -> str:
    return args[args.index(name) + 1]


def _opts(args: Sequence[str], name: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def _s3_list(operation: str, bucket: str, prefix: str) -> Request:
    return Request(
        operation, "s3:ListBucket", f"arn:aws:s3:::{bucket}", {**SECURE, "s3:prefix": (prefix,)}, S3_LIST_KEYS
    )


def _s3_get(operation: str, bucket: str, key: str, ctx: Context) -> list[Request]:
    requests = [Request(operation, "s3:GetObject", f"arn:aws:s3:::{bucket}/{key}", SECURE)]
    if not (ctx.bucket_root / bucket / key).is_file():  # 403 instead of 404 without ListBucket
        requests.append(
            Request(f"{operation} (missing key)", "s3:ListBucket", f"arn:aws:s3:::{bucket}", SECURE, S3_LIST_KEYS)
        )
    return requests


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _repository(reference: str) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com/<name>[:tag]`` -> the repository's ARN."""
    match = ECR_HOST.match(reference)
    if match is None:
        raise UnmodeledError(f"{reference!r} is not an ECR image reference")
    account, region, name = match.groups()
    return f"arn:aws:ecr:{region}:{account}:repository/{name}"


def _ecr(operation: str, actions: Sequence[str], reference: str) -> list[Request]:
    arn = _repository(reference)
    return [Request(operation, action, arn, SECURE) for action in actions]


def aws_requests(args: Sequence[str], ctx: Context) -> list[Request]:
    """The requests one ``aws`` command line makes (``args`` without ``aws``)."""
    match list(args[:2]):
        case ["--version", *_] | ["configure", "export-credentials"]:
            return []
        case ["ecr", "get-login-password"]:
            return [Request("ecr:GetAuthorizationToken", "ecr:GetAuthorizationToken", "*", SECURE)]
        case ["ecr", "describe-images"]:
            registry = _opt(args, "--registry-id") if "--registry-id" in args else ctx.account
            arn = f"arn:aws:ecr:{ctx.region}:{registry}:repository/{_opt(args, '--repository-name')}"
            return [Request("ecr:DescribeImages", "ecr:DescribeImages", arn, SECURE)]
        case ["s3api", "list-objects-v2"]:
            return [_s3_list("s3:ListObjectsV2", _opt(args, "--bucket"), _opt(args, "--prefix"))]
        case ["s3", "cp"]:
            sources = [a for a in args[2:] if a.startswith("s3://")]
            if len(sources) != 1 or not args[-1] == "-":
                raise UnmodeledError(f"aws s3 cp {' '.join(args[2:])}: only a download to stdout is modeled")
            return _s3_get("s3:GetObject", *_split_s3(sources[0]), ctx)
        case ["s3", "sync"]:
            source = next(a for a in args[2:] if a.startswith("s3://"))
            bucket, prefix = _split_s3(source)
            root = ctx.bucket_root / bucket
            keys = (
                sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
            )
            gets = [r for k in keys if k.startswith(prefix) for r in _s3_get("s3:GetObject", bucket, k, ctx)]
            return [_s3_list("s3:ListObjectsV2", bucket, prefix), *gets]
    raise UnmodeledError(f"aws {' '.join(args)}: how AWS authorizes it is not modeled")


# --- docker ---------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str  # what FROM names: an image, another stage, or scratch
    args: set[str] = field(default_factory=set)  # ARGs declared in the stage
    env: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    uses: list[str] = field(default_factory=list)  # stages of COPY --from / RUN --mount ...,from=


def _instructions(text: str) -> list[str]:
    joined = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def dockerfile_stages(text: str) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in _instructions(text):
        word, _, rest = line.partition(" ")
        if word == "FROM":
            base, _, name = rest.partition(" AS ")
            current = stages[name.strip()] = Stage(name.strip(), base.strip())
        elif current is None:
            continue  # global ARGs: their values come from --build-arg
        elif word == "ARG":
            current.args.add(rest.split("=", 1)[0].strip())
        elif word == "ENV":
            for pair in shlex.split(rest):
                name, equals, value = pair.partition("=")
                if equals:
                    current.env[name] = value
        elif word in ("RUN", "COPY"):
            current.uses += re.findall(r"(?:--from=|[,\s]from=)([\w.-]+)", rest)
            if word == "RUN":
                current.runs.append(rest)
    return stages


def _expand(text: str, values: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise UnmodeledError(f"${{{name}}} in {text!r}: no value for it")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def image_build_requests(args: Sequence[str], ctx: Context) -> list[Request]:
    """``docker buildx build``: pushes, cache, base images, and the stages' ``aws`` calls."""
    build_args = dict(a.split("=", 1) for a in _opts(args, "--build-arg"))
    stages = dockerfile_stages(ctx.dockerfile.read_text())
    requests: list[Request] = []
    if "--push" in args:
        requests += _ecr("docker push", ECR_PUSH, _opt(args, "--tag"))
    for cache in _opts(args, "--cache-to"):
        requests += _ecr("docker push (cache)", ECR_PUSH, dict(p.split("=", 1) for p in cache.split(","))["ref"])
    for cache in _opts(args, "--cache-from"):
        requests += _ecr("docker pull (cache)", ECR_PULL, dict(p.split("=", 1) for p in cache.split(","))["ref"])
    seen: set[str] = set()

    def walk(name: str, inherited: Mapping[str, str]) -> None:
        if name in seen:
            return
        seen.add(name)
        stage = stages[name]
        base = _expand(stage.base, build_args)
        env = dict(inherited)
        if base in stages:
            walk(base, {})
            env.update(_stage_env(stages, base))
        elif base != "scratch" and ECR_HOST.match(base):
            requests.extend(_ecr(f"docker pull {base}", ECR_PULL, base))
        env.update(stage.env)
        values = {**{k: v for k, v in build_args.items() if k in stage.args}, **env}
        for run in stage.runs:
            for command in re.findall(r"aws (s3 sync[^&;|]*)", run):
                requests.extend(aws_requests(shlex.split(_expand(command, values)), ctx))
        for used in stage.uses:
            walk(_expand(used, build_args), {})

    walk(_opt(args, "--target"), {})
    return requests


def _stage_env(stages: Mapping[str, Stage], name: str) -> dict[str, str]:
    stage = stages[name]
    parent = _stage_env(stages, stage.base) if stage.base in stages else {}
    return {**parent, **stage.env}


def docker_requests(args: Sequence[str], ctx: Context) -> list[Request]:
    """The requests one ``docker`` command line makes (``args`` without ``docker``)."""
    if args[0] == "login" or list(args[:2]) in (["buildx", "create"], ["buildx", "version"], ["buildx", "rm"]):
        return []  # the ECR token from get-login-password; local builder state; BuildKit's image is on public ECR
    if list(args[:2]) == ["buildx", "build"]:
        return image_build_requests(args, ctx)
    if list(args[:3]) == ["buildx", "imagetools", "create"]:
        sources = [a for a in args[3:] if not a.startswith("--") and a != _opt(args, "--tag")]
        pulls = [r for source in sources for r in _ecr("docker buildx imagetools create", ECR_PULL, source)]
        return pulls + _ecr("docker buildx imagetools create", ECR_PUSH, _opt(args, "--tag"))
    if list(args[:3]) == ["buildx", "imagetools", "inspect"]:
        return _ecr("docker buildx imagetools inspect", ECR_PULL, args[3])
    raise UnmodeledError(f"docker {' '.join(args)}: how AWS authorizes it is not modeled")
