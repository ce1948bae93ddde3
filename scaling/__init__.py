"""Scale-out simulation of a serving Deployment: KEDA on CloudWatch, the HPA, Karpenter, cold starts.

``python -m scaling.simulate`` (``make simulate``) runs traffic traces through a deterministic
model of the autoscaling loop as the charts render it and writes a table and a PNG to docs/.
Plain Python on ``spec``; never imports the CDK, cdk8s, the charts or the runtime.
"""
