"""The plan: what the stacks, the charts and the runtime all describe, and none builds.

Typed config and its ``-c`` parsing, the accelerator table, the versions catalog, physical names,
image tags, placements (which accelerator serves in which location), the model-artifact layout
and the serving contract with the runtime. Plain Python: nothing here imports the CDK or cdk8s,
so ``stacks/``, ``charts/`` and ``runtime/`` can all depend on it, and it on none of them.
"""
