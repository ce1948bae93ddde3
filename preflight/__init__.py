"""`make preflight`: what a first deploy needs from the AWS account, checked before it starts.

Read-only calls with your credentials (boto3): the CDK bootstrap stack, Local Zone opt-in, instance
type offerings, EC2 vCPU quotas, the EKS version, the TLS certificate and secret, and whether the
physical names a deploy creates are free or adoptable. One line per check,
``PASS|FAIL|SKIP <check>: <detail>[; fix: <what to do>]``; exit 1 on any FAIL, 2 on config errors.

A package of its own, not one of the stacks: it builds nothing and reads only the plan (plan/),
so it runs with boto3 and without the CDK (the import-linter contract ``preflight-on-the-plan``).
"""

from preflight.checks import Result, run_checks

__all__ = ["Result", "run_checks"]
