"""Compile job: compile a model artifact for one device and publish it with its manifest.

    python -m runtime.compile --model tiny|sd21-random|sd21-768-random|sd-turbo-random|<hub id> [--revision R] \
        --device neuron|cuda|cpu [--height H] [--width W] [--batch-size B] [--dtype float16|bfloat16|float32] \
        [--inductor-cache] --out s3://bucket/prefix | ./local-dir

The artifact lands in `<out>/<model>/<revision>/<device>/` (`runtime.artifacts.store.artifact_uri`):

- neuron: optimum-neuron export at static shapes (`NeuronStableDiffusionPipeline.from_pretrained(
  ..., export=True, batch_size=, height=, width=)`), since Neuron graphs are compiled per shape;
  a model served without classifier-free guidance (SD-Turbo) is exported with dynamic batching
  (`export.neuron_dynamic_batch` says why);
- cuda / cpu: the diffusers pipeline saved as safetensors at the serving dtype (float16 for cuda,
  float32 for cpu) so pods load it without conversion; for cuda, `--inductor-cache` also warms a
  TorchInductor cache on the GPU and ships it in `contract.INDUCTOR_CACHE_DIRNAME/`.

Every artifact holds the text encoder, the UNet and both halves of the VAE (the encoder serves
image prompts); its manifest lists them (`plan.model_artifacts.COMPONENTS_OPTION`) and an export
without one of them fails. Without `--height`/`--width` a model compiles at its native size (a
built-in model's, or `plan.model_artifacts.MODEL_PROFILES`').

When a complete artifact with an identical `ArtifactSpec` (model, revision, device, shapes, dtype,
library versions) is already at the destination, nothing is built or uploaded. Every flag
falls back to an environment variable from `plan.contract` so the Volcano Job sets them by
env (`settings`). Exit codes: 0 done or skipped, 1 the compile or upload failed, 2 bad flags or values.
"""
