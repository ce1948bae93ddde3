"""Scale-out simulation of a serving Kubernetes Deployment: KEDA on CloudWatch, the HPA, Karpenter, cold starts.

``python -m scaling.simulate`` (``make simulate``) runs traffic traces through a deterministic
simulation of the autoscaling loop as the charts render it and writes a table and a PNG to docs/.
Plain Python on ``plan``; never imports the CDK, cdk8s, the charts or the runtime.
"""
