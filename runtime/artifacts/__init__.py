"""Compiled-model artifacts: the manifest, its verification, and its storage (S3 or a local dir).

The compile job (``python -m runtime.compile``) writes a model directory, describes it in a
manifest (``manifest``) and publishes it (``store``) under ``<base>/<model>/<revision>/<device>/``.
The image build, and a server given that prefix as its model source (a workstation), fetch it and
refuse to load anything whose bytes differ from the manifest, so a half-copied or tampered model
never reaches a GPU. ``python -m runtime.artifacts`` fetches or
verifies an artifact (the image build bakes a verified model into a layer with it), or promotes one
(``promotions``: the serving images carry only artifacts promoted by their manifest's sha256).
"""
