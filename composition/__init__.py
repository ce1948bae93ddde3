"""How the stacks and the charts fit together into the app: the layer above both.

``spec`` (the model) < ``stacks`` | ``charts`` (neither imports the other) < ``composition``
< ``app.py``; ``make lint`` checks it (import-linter, pyproject.toml).
"""
