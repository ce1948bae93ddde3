"""The endpoint inventory: the in-cluster publisher and the devices' read API.

``python -m runtime.inventory`` runs the publisher (``publisher``: what it reads with
``cluster``, writes as ``endpoint`` items, configured by ``settings``). ``api`` is the read
API's Lambda handler and the table layout; the stack ships that one file alone.
"""
