"""The inference server (``python -m runtime.server``): REST API, Gradio UI, probes and metrics.

``app`` builds the FastAPI app, ``routes`` are its endpoints, ``protocol`` what they speak, and
``service`` the model lifecycle and the one generate() path; ``batcher`` coalesces requests
for ``backends`` (cuda, neuron, cpu), whose model ``model_source`` resolves and verifies.
"""
