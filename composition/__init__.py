"""How the stacks and the charts fit together into the app: the layer above both.

``plan`` (the plan layer) < ``stacks`` | ``charts`` (neither imports the other) < ``composition``
< ``app.py``; ``make lint`` checks it (import-linter, pyproject.toml).
"""
