"""InventoryStack: the table of serving endpoints devices pull, its read API and the token route.

Every available endpoint is published to an inventory that devices pull: a DynamoDB table kept
equal to what is serving by the in-cluster publisher (``runtime/inventory/``, wired by
``charts/inventory.py``), read by devices through an API Gateway REST API whose methods all
require SigV4 (IAM auth): the caller's credentials are either IAM credentials it already has
(``inventoryAuth=iam``) or ones a Cognito identity pool hands to signed-in users
(``inventoryAuth=cognito``). No anonymous access.

The same callers get the bearer tokens inference endpoints require from ``GET /token`` (unless
``auth.mode`` is ``none``): a second Lambda asks a KMS RSA key, created here under the alias
``naming.token_signing_key_alias``, to sign a short-lived RS256 JWT. Only that Lambda's role may
sign, and no principal may grant itself signing (the key policy's explicit Denies,
``token_key_policy``); the account may administer the key and read its public half through IAM
policies, which the serving pods' roles get (``workload_roles.token_public_key_statement``).

Each handler also counts its calls per caller (the IAM or Cognito identity API Gateway's IAM auth
names) in a small table of counters (``CallerRateTable``): a caller over ``InventoryProps``'
``caller_limit`` per ``caller_window_s`` gets 429 with Retry-After, before its token is signed, while
other callers' calls go on; the stage's throttle still bounds all callers together.

Both handlers also record device demand (``api.DeviceDemand``: EMF lines in their logs, no API
call) for the Region and the serving Local Zones near the caller (``demand_environment``), which
wakes placements at minReplicas 0 (docs/inventory.md#device-demand-wakes-sleeping-placements).

The table's physical name comes from ``plan/naming.py``: the publisher's Pod Identity role and
the chart refer to it by name, so no CloudFormation export couples the stacks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aws_cdk as cdk
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_wafv2 as wafv2
from constructs import Construct

from plan import contract, naming
from plan.config import AppConfig
from runtime.inventory import api as layout

HANDLER_DIR: Final = Path(__file__).resolve().parents[1] / "runtime" / "inventory"
HANDLER_FILE: Final = "api.py"
# What a publisher may do: write and remove entries. No reads: it reconciles from the cluster's
# state, and entries it forgot across a restart expire by TTL.
PUBLISH_ACTIONS: Final = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem")
# What a handler may do to the per-caller counters: count a call (one conditional UpdateItem).
RATE_ACTIONS: Final = ("dynamodb:UpdateItem",)
ENDPOINTS_RESOURCE: Final = "endpoints"
TOKEN_RESOURCE: Final = contract.TOKEN_PATH.strip("/")
TOKEN_HANDLER: Final = f"{Path(HANDLER_FILE).stem}.token_handler"
# What the account's administrators may do with the token signing key: manage it, never sign.
# (The AWS console's "key administrators" list, less kms:CreateGrant: kms:Sign is the token
# Lambda's alone, and the key policy's Denies, token_key_policy, hold whatever IAM policies say.)
KEY_ADMIN_ACTIONS: Final = (
    "kms:CreateAlias",
    "kms:Describe*",
    "kms:Enable*",
    "kms:List*",
    "kms:Put*",
    "kms:Update*",
    "kms:Revoke*",
    "kms:Disable*",
    "kms:Get*",
    "kms:Delete*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
)
# What IAM policies in the account may be given on the key: reading its public half (the servers).
KEY_PUBLIC_ACTIONS: Final = ("kms:GetPublicKey", "kms:DescribeKey")
# What would let a principal sign tokens, or trust another key's: signing itself, a grant (a grant
# for kms:Sign needs no key policy change), rewriting the policy, moving or removing the alias the
# servers read the public key by, or deleting the key (once deleted, its alias name is free for a key
# of the caller's own) or disabling it (token issuance stops). Explicit Denies: an IAM Allow cannot
# outweigh them. CloudFormation's execution role keeps the deployer actions: an update rewrites the
# policy, a destroy deletes the alias and schedules the key's deletion.
SIGN_ACTIONS: Final = ("kms:Sign",)
GRANT_ACTIONS: Final = ("kms:CreateGrant",)
DEPLOYER_ACTIONS: Final = (
    "kms:PutKeyPolicy",
    "kms:UpdateAlias",
    "kms:DeleteAlias",
    "kms:ScheduleKeyDeletion",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
)
PRINCIPAL_ARN: Final = "aws:PrincipalArn"
# AWS WAF rate-based rules: a limit from 10 requests per evaluation window, windows of 1, 2, 5 or 10 minutes.
WAF_RATE_BOUNDS: Final = (10, 2_000_000_000)
WAF_WINDOWS_S: Final = (60, 120, 300, 600)
# SigV4 requests signed with temporary credentials (Cognito identity-pool credentials, assumed roles)
# carry the session token: one value per device session, where the Authorization header changes
# with every signature.
CREDENTIAL_HEADER: Final = "x-amz-security-token"


@dataclass(frozen=True)
class InventoryProps:
    """Knobs of the inventory; defaults in one place, bounds checked on construction."""

    stage_name: str = "v1"
    throttle_rate_per_s: float = 50.0  # devices pull once per session, not per image
    throttle_burst: int = 100
    # Per caller (IAM or Cognito identity) and route, in the handlers (api.RateLimit): at most
    # caller_limit calls of GET /token, and as many of GET /endpoints, per caller_window_s.
    caller_limit: int = layout.DEFAULT_RATE_LIMIT
    caller_window_s: int = layout.DEFAULT_RATE_WINDOW_S
    # Per credential and per source address, at the edge (CallerRateLimits, a WAF web ACL evaluated
    # before the stage's throttle): one caller's flood is blocked before it spends the stage's
    # shared rate. Requests per waf_window_s; WAF's bounds.
    waf_per_credential: int = 300
    waf_per_address: int = 1200
    waf_window_s: int = 60
    log_retention: logs.RetentionDays = logs.RetentionDays.THREE_MONTHS
    handler_memory_mib: int = 256
    handler_timeout_s: int = 10
    key_deletion_window_days: int = 7  # tokens live minutes: a deleted key needs no long recovery window

    def __post_init__(self) -> None:
        for name, value, (low, high) in (
            ("caller_limit", self.caller_limit, layout.RATE_LIMIT_BOUNDS),
            ("caller_window_s", self.caller_window_s, layout.RATE_WINDOW_BOUNDS_S),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"InventoryProps.{name}={value!r}: allowed an integer from {low} to {high}")
        for name, value in (("waf_per_credential", self.waf_per_credential), ("waf_per_address", self.waf_per_address)):
            low, high = WAF_RATE_BOUNDS
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"InventoryProps.{name}={value!r}: allowed an integer from {low} to {high}")
        if self.waf_window_s not in WAF_WINDOWS_S:
            allowed = ", ".join(map(str, WAF_WINDOWS_S))
            raise ValueError(f"InventoryProps.waf_window_s={self.waf_window_s!r}: allowed one of {allowed}")

    def rate_environment(self, table: dynamodb.ITable) -> dict[str, str]:
        """The handlers' environment for ``api.RateLimit.from_env``."""
        return {
            layout.ENV_RATE_TABLE: table.table_name,
            layout.ENV_RATE_LIMIT: str(self.caller_limit),
            layout.ENV_RATE_WINDOW_S: str(self.caller_window_s),
        }


def demand_environment(config: AppConfig) -> dict[str, str]:
    """The handlers' environment for ``api.DeviceDemand.from_env``: whose demand is recorded where.

    Only Local Zones with serving placements: demand for a zone nothing can serve in wakes nothing."""
    return {
        layout.ENV_DEMAND_CLUSTER: config.cluster_name,
        layout.ENV_DEMAND_REGION: config.region,
        layout.ENV_DEMAND_ZONES: config.device_cidrs_json(),  # its size is bounded by config
    }


def table_arn(config: AppConfig) -> str:
    """The table's ARN from config (only the partition is a pseudo-parameter): no cross-stack export."""
    return (
        f"arn:{cdk.Aws.PARTITION}:dynamodb:{config.region}:{config.account}:table/{naming.inventory_table_name(config)}"
    )


def publisher_statements(config: AppConfig) -> list[iam.PolicyStatement]:
    """The publisher's permission on this stack's resources: write items of this one table.

    Its metrics (ReadyServingPods, InventoryEndpoints) also need ``workload_roles.metrics_statement``
    on its role, acknowledged where the role is created (PutMetricData has no resource ARNs)."""
    return [iam.PolicyStatement(actions=list(PUBLISH_ACTIONS), resources=[table_arn(config)])]


class EndpointTable(Construct):
    """The DynamoDB table of endpoints (layout in ``runtime/inventory/api.py``)."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            table_name=naming.inventory_table_name(config),
            partition_key=dynamodb.Attribute(name=layout.ATTR_MODEL, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=layout.ATTR_SORT_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            # AWS-owned keys are not auditable; the AWS managed key (aws/dynamodb) is, and needs no
            # key policy or grants for the publisher and the API.
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=layout.ATTR_EXPIRES_AT,
            # Derived state: the publisher rewrites every live entry within one heartbeat.
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )


def rate_table_name(config: AppConfig) -> str:
    """The per-caller counters' table, named like the endpoint table from the cluster's name."""
    return f"{config.cluster_name}-caller-rates"


class CallerRateTable(Construct):
    """The per-caller call counters of the device routes (``api.RateLimit``).

    A table of its own rather than items in the endpoint table: the endpoint table is keyed by
    model and read by devices (a counter there would sit one query away from the endpoints), its
    writers are the publishers, and its backups are of endpoints; here each handler's role gets
    ``dynamodb:UpdateItem`` on counters only, which expire by TTL a window after they start."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            table_name=rate_table_name(config),
            partition_key=dynamodb.Attribute(name=layout.ATTR_RATE_KEY, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            time_to_live_attribute=layout.ATTR_EXPIRES_AT,
            removal_policy=cdk.RemovalPolicy.DESTROY,  # counters of the current window, nothing to keep
        )
        cdk.Validations.of(self.table).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-DDB3",
                reason="Call counters of a window of at most an hour that expire by TTL: a point-in-time "
                "restore would bring back only counts that no longer apply.",
            )
        )


class InventoryReadApi(Construct):
    """GET /endpoints: a Lambda behind an IAM-authorized, throttled, logged and traced REST API."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        table: dynamodb.ITable,
        rate_table: dynamodb.ITable,
        props: InventoryProps,
    ) -> None:
        super().__init__(scope, construct_id)
        self.rate_table = rate_table
        handler_logs = logs.LogGroup(self, "HandlerLogs", retention=props.log_retention)
        role = iam.Role(
            self,
            "HandlerRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Inventory read API: query the endpoint table, count calls, write its own logs and traces",
        )
        # Own log group instead of AWSLambdaBasicExecutionRole (which allows every log group);
        # the group's Arn attribute already ends in ":*", which covers its streams.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[handler_logs.log_group_arn],
            )
        )
        table.grant(role, "dynamodb:Query")
        rate_table.grant(role, *RATE_ACTIONS)
        self.function = lambda_.Function(
            self,
            "Handler",
            runtime=lambda_.Runtime.PYTHON_3_13,
            architecture=lambda_.Architecture.ARM_64,
            handler=f"{Path(HANDLER_FILE).stem}.handler",
            # Only the handler file: it depends on boto3 alone, which the runtime provides.
            code=lambda_.Code.from_asset(str(HANDLER_DIR), exclude=["*", f"!{HANDLER_FILE}"]),
            role=role,
            memory_size=props.handler_memory_mib,
            timeout=cdk.Duration.seconds(props.handler_timeout_s),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=handler_logs,
            environment={
                layout.ENV_TABLE: table.table_name,
                layout.ENV_DEFAULT_MODEL: config.model_id,
                contract.ENV_AUTH: config.auth.mode,  # the answer tells clients whether to fetch a token
                **props.rate_environment(rate_table),
                **demand_environment(config),
            },
            description="Returns the live serving endpoints of the endpoint inventory as JSON",
        )
        cdk.Validations.of(self.function).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-L1",
                reason="Pinned to Python 3.13, a supported runtime the handler is tested on; a runtime "
                "upgrade is a reviewed change, not something synth should pick up silently.",
            )
        )
        cdk.Validations.of(role).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions.",
            ),
        )

        access_logs = logs.LogGroup(self, "AccessLogs", retention=props.log_retention)
        self.api = apigw.RestApi(
            self,
            "Api",
            rest_api_name=f"{config.cluster_name}-inventory",
            description="Edge Diffusion endpoint inventory: the live serving endpoints for devices",
            endpoint_types=[apigw.EndpointType.REGIONAL],
            # Execution logs need the account's API Gateway logging role, a per-Region account setting
            # that each deployment (pipeline stage) sets; retained so deleting one deployment does not
            # break the logging of the others.
            cloud_watch_role=True,
            cloud_watch_role_removal_policy=cdk.RemovalPolicy.RETAIN,
            deploy_options=apigw.StageOptions(
                stage_name=props.stage_name,
                throttling_rate_limit=props.throttle_rate_per_s,
                throttling_burst_limit=props.throttle_burst,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=True,
                    http_method=True,
                    ip=True,
                    protocol=True,
                    request_time=True,
                    resource_path=True,
                    response_length=True,
                    status=True,
                    user=True,
                ),
                logging_level=apigw.MethodLoggingLevel.ERROR,
                data_trace_enabled=False,  # request data could include credentials' context
                metrics_enabled=True,
                tracing_enabled=True,
            ),
            default_method_options=apigw.MethodOptions(authorization_type=apigw.AuthorizationType.IAM),
            disable_execute_api_endpoint=False,
        )
        self.validator = validator = self.api.add_request_validator(
            "RequestValidator",
            request_validator_name="inventory-requests",
            validate_request_parameters=True,
            validate_request_body=True,
        )
        resource = self.api.root.add_resource(ENDPOINTS_RESOURCE)
        resource.add_method(
            "GET",
            apigw.LambdaIntegration(self.function),
            authorization_type=apigw.AuthorizationType.IAM,
            request_validator=validator,
            request_parameters={f"method.request.querystring.{name}": False for name in layout.QUERY_PARAMS},
        )
        self.endpoints_url = self.api.url_for_path(f"/{ENDPOINTS_RESOURCE}")
        self.get_endpoints_arn = self.api.arn_for_execute_api("GET", f"/{ENDPOINTS_RESOURCE}", props.stage_name)
        self.props = props
        cdk.Validations.of(self.api).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-COG4",
                reason="The API authorizes with IAM (SigV4); Cognito users reach it through identity-pool "
                "credentials (inventoryAuth=cognito), not a user-pool authorizer.",
            ),
            cdk.Acknowledgment(
                id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AmazonAPIGatewayPushToCloudWatchLogs]",
                reason="API Gateway's account-level logging role; this AWS managed policy is the documented "
                "way to let API Gateway write execution logs.",
            ),
        )


def deployer_role_arn(stack: cdk.Stack) -> str:
    """The role CloudFormation deploys ``stack`` as: the CDK bootstrap's execution role (cfn-exec),
    which both ``cdk deploy`` and the deploy pipeline's stages pass to CloudFormation."""
    synthesizer = stack.synthesizer
    if not isinstance(synthesizer, cdk.DefaultStackSynthesizer):
        raise TypeError(
            f"{stack.stack_name}: the token key policy names the CloudFormation execution role of a "
            f"DefaultStackSynthesizer, not a {type(synthesizer).__name__}"
        )
    return cdk.Fn.sub(synthesizer.cloud_formation_execution_role_arn)  # ${AWS::Partition} in it


def token_key_policy(signer_role_arn: str, deployer_role_arn: str) -> iam.PolicyDocument:
    """The token signing key's policy: only ``signer_role_arn`` signs, nobody grants signing, and
    only ``deployer_role_arn`` (CloudFormation) rewrites the policy, moves the alias, or disables or
    deletes the key.

    The account keeps administering the key through IAM (describe, tag, enable), but explicit
    Denies on ``aws:PrincipalArn`` outweigh any IAM Allow: an administrator's ``kms:*`` cannot
    sign, cannot ``kms:CreateGrant`` itself ``kms:Sign``, cannot ``kms:PutKeyPolicy`` the Denies
    away, cannot point the alias the servers read the public key by at a key of its own, and cannot
    delete the key to free that alias name (nor disable it, which would stop token issuance).
    CloudFormation schedules its deletion on destroy. KMS refuses a policy that would lock
    out its own caller, so CloudFormation, which creates the key as ``deployer_role_arn``, fails
    the deploy rather than leave a key no one can update.

    Residual risk (no key policy can close it): whoever can act as either role can sign. The
    account's IAM administrators could change the execution role's trust policy and assume it,
    change the token Lambda's code or trust policy, or pass its role to a function of their own;
    and anyone allowed to deploy a CloudFormation change with the execution role can rewrite this
    policy, as they can any resource. Restrict ``iam:UpdateAssumeRolePolicy``, ``iam:PassRole`` and
    ``lambda:UpdateFunctionCode`` on those roles and functions (an SCP or permissions boundary) to
    close it. A new bootstrap qualifier means a new execution role: update the key from the old
    one first, or CloudFormation cannot update this policy.
    """
    root = iam.AccountRootPrincipal()
    anyone = iam.AnyPrincipal()

    def deny(sid: str, actions: tuple[str, ...], but: str | None = None) -> iam.PolicyStatement:
        """An explicit Deny of ``actions`` to every principal, or to every one but the role ``but``."""
        return iam.PolicyStatement(
            sid=sid,
            effect=iam.Effect.DENY,
            principals=[anyone],
            actions=list(actions),
            resources=["*"],
            conditions={"ArnNotEquals": {PRINCIPAL_ARN: but}} if but else None,
        )

    return iam.PolicyDocument(
        statements=[
            iam.PolicyStatement(
                sid="AccountAdministersTheKey",
                principals=[root],
                actions=list(KEY_ADMIN_ACTIONS),
                resources=["*"],  # in a key policy "*" is this key
            ),
            iam.PolicyStatement(
                sid="IamPoliciesMayReadThePublicKey",
                principals=[root],
                actions=list(KEY_PUBLIC_ACTIONS),
                resources=["*"],
            ),
            iam.PolicyStatement(
                sid="OnlyTheTokenRouteSigns",
                principals=[iam.ArnPrincipal(signer_role_arn)],
                actions=list(SIGN_ACTIONS),
                resources=["*"],
            ),
            deny("NoOneElseSigns", SIGN_ACTIONS, but=signer_role_arn),
            deny("NoGrants", GRANT_ACTIONS),  # nothing here needs one; a grant for kms:Sign would sign
            deny("OnlyCloudFormationRewritesDeletesOrDisablesTheKey", DEPLOYER_ACTIONS, but=deployer_role_arn),
        ]
    )


class TokenSigning(Construct):
    """GET /token: a Lambda that has the deployment's KMS RSA key sign short-lived RS256 tokens."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, read_api: InventoryReadApi) -> None:
        super().__init__(scope, construct_id)
        props = read_api.props
        handler_logs = logs.LogGroup(self, "HandlerLogs", retention=props.log_retention)
        self.role = iam.Role(
            self,
            "HandlerRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=(
                "Inventory token route: sign tokens with the token signing key, count calls, write its own logs and "
                "traces"
            ),
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[handler_logs.log_group_arn]
            )
        )
        self.key = kms.Key(
            self,
            "Key",
            description=f"Signs the bearer tokens of Edge Diffusion deployment {config.cluster_name} (RS256)",
            key_spec=kms.KeySpec.RSA_2048,
            key_usage=kms.KeyUsage.SIGN_VERIFY,  # asymmetric: KMS rotates none, enableKeyRotation stays unset
            alias=naming.token_signing_key_alias(config),
            pending_window=cdk.Duration.days(props.key_deletion_window_days),
            # Tokens live minutes and servers re-read the public key at start: a new key after a
            # destroy and create only means fresh tokens, so the key goes with its deployment.
            removal_policy=cdk.RemovalPolicy.DESTROY,
            policy=token_key_policy(self.role.role_arn, deployer_role_arn(cdk.Stack.of(self))),
        )
        self.role.add_to_policy(iam.PolicyStatement(actions=["kms:Sign"], resources=[self.key.key_arn]))
        read_api.rate_table.grant(self.role, *RATE_ACTIONS)
        self.function = lambda_.Function(
            self,
            "Handler",
            runtime=lambda_.Runtime.PYTHON_3_13,
            architecture=lambda_.Architecture.ARM_64,
            handler=TOKEN_HANDLER,
            code=lambda_.Code.from_asset(str(HANDLER_DIR), exclude=["*", f"!{HANDLER_FILE}"]),
            role=self.role,
            memory_size=props.handler_memory_mib,
            timeout=cdk.Duration.seconds(props.handler_timeout_s),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=handler_logs,
            environment={
                contract.ENV_TOKEN_KEY_ID: self.key.key_arn,
                contract.ENV_TOKEN_ISSUER: naming.token_issuer(config),
                contract.ENV_TOKEN_AUDIENCE: contract.TOKEN_AUDIENCE,
                contract.ENV_TOKEN_TTL_S: str(config.auth.token_ttl_s),
                **props.rate_environment(read_api.rate_table),
                **demand_environment(config),
            },
            description="Issues RS256 bearer tokens for the inference endpoints, signed by KMS",
        )
        cdk.Validations.of(self.function).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-L1",
                reason="Pinned to Python 3.13, a supported runtime the handler is tested on; a runtime "
                "upgrade is a reviewed change, not something synth should pick up silently.",
            )
        )
        cdk.Validations.of(self.role).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions-IAM5[Resource::*]",
                reason="X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions.",
            ),
        )
        resource = read_api.api.root.add_resource(TOKEN_RESOURCE)
        resource.add_method(
            "GET",
            apigw.LambdaIntegration(self.function),
            authorization_type=apigw.AuthorizationType.IAM,
            request_validator=read_api.validator,
        )
        self.token_url = read_api.api.url_for_path(contract.TOKEN_PATH)
        self.get_token_arn = read_api.api.arn_for_execute_api("GET", contract.TOKEN_PATH, props.stage_name)


class DeviceIdentityPool(Construct):
    """Cognito user pool and identity pool: signed-in app users get credentials that may call the device routes."""

    def __init__(self, scope: Construct, construct_id: str, *, config: AppConfig, invoke_arns: list[str]) -> None:
        super().__init__(scope, construct_id)
        self.user_pool = cognito.UserPool(
            self,
            "Users",
            user_pool_name=f"{config.cluster_name}-devices",
            self_sign_up_enabled=False,  # the app's operators invite users
            sign_in_aliases=cognito.SignInAliases(email=True),
            password_policy=cognito.PasswordPolicy(
                min_length=12, require_digits=True, require_lowercase=True, require_uppercase=True, require_symbols=True
            ),
            mfa=cognito.Mfa.REQUIRED,
            mfa_second_factor=cognito.MfaSecondFactor(otp=True, sms=False),
            feature_plan=cognito.FeaturePlan.PLUS,
            standard_threat_protection_mode=cognito.StandardThreatProtectionMode.FULL_FUNCTION,
            account_recovery=cognito.AccountRecovery.EMAIL_ONLY,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.client = self.user_pool.add_client(
            "DeviceApp",
            generate_secret=False,  # a device cannot keep a secret
            auth_flows=cognito.AuthFlow(user_srp=True),
        )
        self.identity_pool = cognito.CfnIdentityPool(
            self,
            "Identities",
            allow_unauthenticated_identities=False,
            cognito_identity_providers=[
                cognito.CfnIdentityPool.CognitoIdentityProviderProperty(
                    client_id=self.client.user_pool_client_id,
                    provider_name=self.user_pool.user_pool_provider_name,
                    server_side_token_check=True,
                )
            ],
        )
        self.authenticated_role = iam.Role(
            self,
            "AuthenticatedRole",
            description="Signed-in device users: read the endpoint inventory and get tokens, nothing else",
            assumed_by=iam.FederatedPrincipal(
                "cognito-identity.amazonaws.com",
                conditions={
                    "StringEquals": {"cognito-identity.amazonaws.com:aud": self.identity_pool.ref},
                    "ForAnyValue:StringLike": {"cognito-identity.amazonaws.com:amr": "authenticated"},
                },
                assume_role_action="sts:AssumeRoleWithWebIdentity",
            ),
        )
        self.authenticated_role.add_to_policy(
            iam.PolicyStatement(actions=["execute-api:Invoke"], resources=invoke_arns)
        )
        cognito.CfnIdentityPoolRoleAttachment(
            self,
            "Roles",
            identity_pool_id=self.identity_pool.ref,
            roles={"authenticated": self.authenticated_role.role_arn},
        )


class CallerRateLimits(Construct):
    """A regional WAF web ACL on the inventory's stage: rate-based rules per credential and per address.

    The stage's throttle is one bucket for every caller, so one credential above it would make
    everyone's calls 429; WAF is evaluated first and blocks that caller alone (with 429). Per
    credential: the session token of temporary credentials (Cognito devices); per source address:
    everything, including long-term IAM keys that carry no session token, at a limit high enough for
    devices behind one NAT. WAF counts over a sliding window and acts within tens of seconds, so a
    flood's first seconds still spend the stage's rate; the handlers' per-identity counters
    (``CallerRateTable``) bound what gets through.
    """

    def __init__(self, scope: Construct, construct_id: str, *, stage: apigw.Stage, props: InventoryProps) -> None:
        super().__init__(scope, construct_id)
        name = cdk.Names.unique_id(self)[-48:]

        def rule(rule_name: str, priority: int, statement: wafv2.CfnWebACL.RateBasedStatementProperty) -> Any:
            return wafv2.CfnWebACL.RuleProperty(
                name=rule_name,
                priority=priority,
                statement=wafv2.CfnWebACL.StatementProperty(rate_based_statement=statement),
                action=wafv2.CfnWebACL.RuleActionProperty(
                    block=wafv2.CfnWebACL.BlockActionProperty(
                        custom_response=wafv2.CfnWebACL.CustomResponseProperty(
                            response_code=429,
                            custom_response_body_key=TOO_MANY_BODY,
                            response_headers=[
                                wafv2.CfnWebACL.CustomHTTPHeaderProperty(
                                    name="Retry-After", value=str(props.waf_window_s)
                                )
                            ],
                        )
                    )
                ),
                visibility_config=_visibility(f"{name}-{rule_name}"),
            )

        per_credential = wafv2.CfnWebACL.RateBasedStatementProperty(
            limit=props.waf_per_credential,
            evaluation_window_sec=props.waf_window_s,
            aggregate_key_type="CUSTOM_KEYS",
            custom_keys=[
                wafv2.CfnWebACL.RateBasedStatementCustomKeyProperty(
                    header=wafv2.CfnWebACL.RateLimitHeaderProperty(
                        name=CREDENTIAL_HEADER,
                        text_transformations=[wafv2.CfnWebACL.TextTransformationProperty(priority=0, type="NONE")],
                    )
                )
            ],
        )
        per_address = wafv2.CfnWebACL.RateBasedStatementProperty(
            limit=props.waf_per_address, evaluation_window_sec=props.waf_window_s, aggregate_key_type="IP"
        )
        self.web_acl = wafv2.CfnWebACL(
            self,
            "WebAcl",
            scope="REGIONAL",
            default_action=wafv2.CfnWebACL.DefaultActionProperty(allow={}),
            description="Per-caller rate limits of the endpoint inventory API",
            custom_response_bodies={
                TOO_MANY_BODY: wafv2.CfnWebACL.CustomResponseBodyProperty(
                    content_type="APPLICATION_JSON",
                    content=(
                        '{"error": "too many requests from this caller: at most '
                        f"{props.waf_per_credential} per credential and {props.waf_per_address} per address "
                        f'every {props.waf_window_s} s; retry after Retry-After seconds"}}'
                    ),
                )
            },
            rules=[rule("PerCredential", 0, per_credential), rule("PerAddress", 1, per_address)],
            visibility_config=_visibility(name),
        )
        self.association = wafv2.CfnWebACLAssociation(
            self, "Association", resource_arn=stage.stage_arn, web_acl_arn=self.web_acl.attr_arn
        )


TOO_MANY_BODY: Final = "too-many-requests"


def _visibility(metric_name: str) -> wafv2.CfnWebACL.VisibilityConfigProperty:
    return wafv2.CfnWebACL.VisibilityConfigProperty(
        cloud_watch_metrics_enabled=True, metric_name=metric_name[:128], sampled_requests_enabled=True
    )


class InventoryStack(cdk.Stack):
    """Endpoint table, its device read API, and the reader policy devices' roles attach."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        props: InventoryProps | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        props = props or InventoryProps()
        self.config = config
        self.table = EndpointTable(self, "EndpointTable", config=config).table
        self.rate_table = CallerRateTable(self, "CallerRateTable", config=config).table
        self.read_api = InventoryReadApi(
            self, "InventoryReadApi", config=config, table=self.table, rate_table=self.rate_table, props=props
        )
        self.rate_limits = CallerRateLimits(
            self, "CallerRateLimits", stage=self.read_api.api.deployment_stage, props=props
        )
        self.token: TokenSigning | None = None
        invoke_arns = [self.read_api.get_endpoints_arn]
        if config.auth.mode != "none":
            self.token = TokenSigning(self, "TokenSigning", config=config, read_api=self.read_api)
            invoke_arns.append(self.token.get_token_arn)
            cdk.CfnOutput(self, "TokenUrl", value=self.token.token_url, description="GET: a bearer token (SigV4)")
            cdk.CfnOutput(self, "TokenSigningKeyArn", value=self.token.key.key_arn)
            cdk.CfnOutput(self, "TokenSigningKeyAlias", value=naming.token_signing_key_alias(config))
        # Attach to the IAM roles or users of devices and app backends (inventoryAuth=iam).
        self.reader_policy = iam.ManagedPolicy(
            self,
            "ReaderPolicy",
            description="Call GET /endpoints (and GET /token) of the Edge Diffusion endpoint inventory",
            statements=[iam.PolicyStatement(actions=["execute-api:Invoke"], resources=invoke_arns)],
        )
        self.identity_pool: DeviceIdentityPool | None = None
        if config.inventory_auth == "cognito":
            self.identity_pool = DeviceIdentityPool(self, "DeviceIdentityPool", config=config, invoke_arns=invoke_arns)
            cdk.CfnOutput(self, "IdentityPoolId", value=self.identity_pool.identity_pool.ref)
            cdk.CfnOutput(self, "UserPoolClientId", value=self.identity_pool.client.user_pool_client_id)
        cdk.CfnOutput(
            self,
            "InventoryUrl",
            value=self.read_api.endpoints_url,
            description="python -m runtime.client --inventory-url",
        )
        cdk.CfnOutput(self, "ReaderPolicyArn", value=self.reader_policy.managed_policy_arn)

    def publisher_statements(self) -> list[iam.PolicyStatement]:
        """For the publisher's Pod Identity role, wherever it is defined (see module docstring)."""
        return publisher_statements(self.config)
