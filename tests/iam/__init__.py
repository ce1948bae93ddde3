"""IAM on real calls: each program that calls AWS runs its own code against moto as a principal holding
exactly the policy documents its synthesized role has (:mod:`tests.iam.harness`), and every call is
authorized the way AWS authorizes it (:mod:`tests.iam.policy`); the image build's recorded ``aws`` and
``docker`` calls are evaluated against its CodeBuild roles (:mod:`tests.iam.ci_calls`)."""
