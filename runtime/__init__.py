"""What runs in the pods and on devices, one package per program.

In the serving image: ``server`` (inference), ``compile`` (the compile job), ``artifacts``
(manifests and their CLI) and ``inventory`` (the endpoint publisher and the read API's Lambda),
all reading their settings through ``settings``. Not in the image: ``client`` (the device
client) and ``bench`` (the benchmark).
"""
