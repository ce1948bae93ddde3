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
sign (the key policy names it); the account may administer the key and read its public half
through IAM policies, which the serving pods' roles get
(``workload_roles.token_public_key_statement``).

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
from constructs import Construct

from plan import contract, naming
from plan.config import AppConfig
from runtime.inventory import api as layout

HANDLER_DIR: Final = Path(__file__).resolve().parents[1] / "runtime" / "inventory"
HANDLER_FILE: Final = "api.py"
# What a publisher may do: write and remove entries. No reads: it reconciles from the cluster's
# state, and entries it forgot across a restart expire by TTL.
PUBLISH_ACTIONS: Final = ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem")
ENDPOINTS_RESOURCE: Final = "endpoints"
TOKEN_RESOURCE: Final = contract.TOKEN_PATH.strip("/")
TOKEN_HANDLER: Final = f"{Path(HANDLER_FILE).stem}.token_handler"
# What the account's administrators may do with the token signing key: manage it, never sign.
# (The AWS console's "key administrators" list; kms:Sign is granted to the token Lambda alone.)
KEY_ADMIN_ACTIONS: Final = (
    "kms:Create*",
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


@dataclass(frozen=True)
class InventoryProps:
    """Knobs of the inventory; defaults in one place."""

    stage_name: str = "v1"
    throttle_rate_per_s: float = 50.0  # devices pull once per session, not per image
    throttle_burst: int = 100
    log_retention: logs.RetentionDays = logs.RetentionDays.THREE_MONTHS
    handler_memory_mib: int = 256
    handler_timeout_s: int = 10
    key_deletion_window_days: int = 7  # tokens live minutes: a deleted key needs no long recovery window


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


class InventoryReadApi(Construct):
    """GET /endpoints: a Lambda behind an IAM-authorized, throttled, logged and traced REST API."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AppConfig,
        table: dynamodb.ITable,
        props: InventoryProps,
    ) -> None:
        super().__init__(scope, construct_id)
        handler_logs = logs.LogGroup(self, "HandlerLogs", retention=props.log_retention)
        role = iam.Role(
            self,
            "HandlerRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Inventory read API: query the endpoint table, write its own logs and traces",
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
                id="AwsSolutions-APIG3",
                reason="Every method requires SigV4 (IAM auth) and the stage is throttled; a WAF web ACL "
                "adds cost without a rule that IAM auth does not already enforce for this read-only API.",
            ),
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
            description="Inventory token route: sign tokens with the token signing key, write its own logs and traces",
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"], resources=[handler_logs.log_group_arn]
            )
        )
        root = iam.AccountRootPrincipal()
        self.key = kms.Key(
            self,
            "Key",
            description=f"Signs the bearer tokens of Edge Diffusion deployment {config.cluster_name} (RS256)",
            key_spec=kms.KeySpec.RSA_2048,
            key_usage=kms.KeyUsage.SIGN_VERIFY,
            alias=naming.token_signing_key_alias(config),
            pending_window=cdk.Duration.days(props.key_deletion_window_days),
            # Tokens live minutes and servers re-read the public key at start: a new key after a
            # destroy and create only means fresh tokens, so the key goes with its deployment.
            removal_policy=cdk.RemovalPolicy.DESTROY,
            policy=iam.PolicyDocument(
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
                        principals=[iam.ArnPrincipal(self.role.role_arn)],
                        actions=["kms:Sign"],
                        resources=["*"],
                    ),
                ]
            ),
        )
        self.role.add_to_policy(iam.PolicyStatement(actions=["kms:Sign"], resources=[self.key.key_arn]))
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
        self.read_api = InventoryReadApi(self, "InventoryReadApi", config=config, table=self.table, props=props)
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
