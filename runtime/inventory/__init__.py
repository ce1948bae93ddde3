"""The endpoint inventory: the in-cluster publisher, and the devices' read API and token route.

``python -m runtime.inventory`` runs the publisher (``publisher``: what it reads with ``cluster``,
writes as ``endpoint`` items, configured by ``settings``; the ALB's weights in ``weights``, its
CloudWatch metrics in ``metrics``). ``api`` holds the Lambda handlers of ``GET /endpoints`` and
``GET /token`` and the table layout; the stack ships that one file alone.
"""
