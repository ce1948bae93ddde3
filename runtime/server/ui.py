"""Gradio 6 UI mounted at contract.UI_PATH, calling the same service (and batcher) as the REST API.

The click handler has no Gradio concurrency limit: admission control is the batcher's
(bounded queue, deadlines), so UI users and API clients are batched together and treated alike.
It depends on the service, never on the app: the app mounts it.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

from runtime.server.backends import DEFAULT_STEPS_SD
from runtime.server.protocol import ApiError
from runtime.server.service import ImageService
from spec import contract

if TYPE_CHECKING:
    from fastapi import FastAPI


def build_ui(service: ImageService) -> Any:
    import gradio as gr

    limits = service.settings.limits

    async def generate(
        prompt: str, negative: str, steps: float, guidance: float, width: float, height: float, seed: float
    ) -> tuple[Any, str]:
        from PIL import Image

        body = {
            "prompt": prompt or "",
            "negative_prompt": negative or None,
            "steps": int(steps),
            "guidance_scale": float(guidance),
            "width": int(width),
            "height": int(height),
            "seed": None if seed is None or seed < 0 else int(seed),
        }
        try:
            out = await service.generate(service.validate(body))
        except ApiError as exc:
            raise gr.Error(exc.message) from None
        r = out.result
        info = (
            f"seed {out.seed} · {out.width}x{out.height} · {out.steps} steps · "
            f"queue {r.queue_s * 1000:.0f} ms · inference {r.inference_s * 1000:.0f} ms · batch of {r.batch_images}"
        )
        return Image.open(io.BytesIO(out.pngs[0])), info

    def defaults() -> tuple[Any, Any, Any, str]:
        """Once the model is loaded, its native size and default steps become the sliders' values."""
        b = service.backend
        status = "ready" if service.ready else f"{service.state}: {service.reason}"
        return (
            gr.update(value=b.default_steps),
            gr.update(value=b.default_width),
            gr.update(value=b.default_height),
            f"**{service.settings.model_id}** on **{b.device}** · {status}",
        )

    with gr.Blocks(title="Edge Diffusion") as demo:
        gr.Markdown("## Edge Diffusion\nStable Diffusion on CUDA, Neuron or CPU, batched with the REST API.")
        status = gr.Markdown()
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, max_length=limits.max_prompt_chars)
                negative = gr.Textbox(label="Negative prompt", max_length=limits.max_prompt_chars)
                with gr.Row():
                    steps = gr.Slider(limits.min_steps, limits.max_steps, value=DEFAULT_STEPS_SD, step=1, label="Steps")
                    guidance = gr.Slider(
                        limits.min_guidance, limits.max_guidance, value=7.5, step=0.5, label="Guidance scale"
                    )
                with gr.Row():
                    width, height = (
                        gr.Slider(
                            limits.min_size,
                            limits.max_size,
                            value=contract.DEFAULT_IMAGE_SIZE,
                            step=limits.size_multiple,
                            label=label,
                        )
                        for label in ("Width", "Height")
                    )
                seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)")
                button = gr.Button("Generate", variant="primary")
            with gr.Column():
                image = gr.Image(label="Image", type="pil", format="png")
                info = gr.Markdown()
        button.click(
            generate,
            inputs=[prompt, negative, steps, guidance, width, height, seed],
            outputs=[image, info],
            concurrency_limit=None,
            api_name="generate",
        )
        demo.load(defaults, outputs=[steps, width, height, status])
    return demo


def mount_ui(app: FastAPI, service: ImageService) -> FastAPI:
    # Pods have no business phoning home: no usage analytics unless explicitly enabled.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    return gr.mount_gradio_app(app, build_ui(service), path=contract.UI_PATH, footer_links=["api"])
