"""Gradio 6 UI mounted at contract.UI_PATH, calling the same service (and batcher) as the REST API.

The click handler has no Gradio concurrency limit: admission control is the service's
(runtime.server.admission: size caps, device time, per-client limits, the batcher's bounded
queue), so UI users and API clients are batched together and treated alike. In token mode the
UI's requests carry a bearer token (the app's gate checks it); its ``sub`` is the client the
per-client limits count, as for the REST API.
A generation shows its real denoising progress (step i of n, reported by the device thread),
and stops when the user presses Cancel (Gradio cancels the handler) or closes the tab (the
session's unload event): the batcher drops the request and, when nobody else shares its
batch, stops the device at the next step. Input mistakes are answered with the API's own
one-line messages. It depends on the service, never on the app: the app mounts it.
It works offline: no analytics, the theme's fonts are served by Gradio itself.
"""

# No `from __future__ import annotations`: Gradio finds gr.Request and gr.Progress parameters by
# their evaluated annotations, and gradio is imported inside build_ui (after OFFLINE_ENV is set).
import asyncio
import io
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from plan import contract
from runtime.server.backends import DEFAULT_STEPS_SD
from runtime.server.protocol import ApiError
from runtime.server.service import ImageService

if TYPE_CHECKING:
    from fastapi import FastAPI

    from runtime.server.auth import TokenVerifier

log = logging.getLogger(__name__)

# Prompts for placing a generated object in an AR scene: one subject, plain light, clean edges.
EXAMPLE_PROMPTS: Final = (
    "a potted monstera plant on a white background, studio lighting, photorealistic",
    "a low-poly red fox figurine, isometric view, soft shadows, clean background",
    "a vintage brass desk lamp, product photo, centered, neutral grey backdrop",
    "a glowing blue crystal on a stone pedestal, fantasy game asset, dark background",
    "a friendly cartoon robot mascot waving, 3d render, full body, white background",
)
_CLIENT_CLOSED: Final = 499  # what a cancelled generation counts as (the REST API's "client closed")
# Off unless the operator turns them on: the UI never phones home.
OFFLINE_ENV: Final = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass
class _Session:
    """One browser tab's generations: `closed` is set when the tab goes away."""

    closed: asyncio.Event = field(default_factory=asyncio.Event)
    active: int = 0


class _Sessions:
    """Open tabs that have a generation running (a tab without one holds nothing here)."""

    def __init__(self) -> None:
        self._open: dict[str, _Session] = {}

    def enter(self, key: str) -> _Session:
        session = self._open.setdefault(key, _Session())
        session.active += 1
        return session

    def leave(self, key: str, session: _Session) -> None:
        session.active -= 1
        if session.active <= 0 and self._open.get(key) is session:
            del self._open[key]

    def close(self, key: str) -> int:
        """The tab closed: its running generations are dropped. Returns how many there were."""
        session = self._open.pop(key, None)
        if session is None:
            return 0
        session.closed.set()
        return session.active


def _request_body(
    prompt: str, negative: str, steps: Any, guidance: Any, width: Any, height: Any, seed: Any
) -> dict[str, Any]:
    """The REST request the form describes; the service validates it like any other."""

    def whole(value: Any) -> Any:
        return int(value) if isinstance(value, float) and value.is_integer() else value

    return {
        "prompt": prompt or "",
        "negative_prompt": negative or None,
        "steps": whole(steps),
        "guidance_scale": float(guidance) if isinstance(guidance, int | float) else guidance,
        "width": whole(width),
        "height": whole(height),
        "seed": None if seed is None or (isinstance(seed, int | float) and seed < 0) else whole(seed),
    }


def build_ui(service: ImageService, verifier: "TokenVerifier | None" = None) -> Any:
    """The Blocks app; with a verifier (token mode) each generation is counted against its token's sub."""
    import gradio as gr

    limits = service.limits
    sessions = _Sessions()

    def slider(minimum: float, maximum: float, **kwargs: Any) -> Any:
        """A slider whose value the service checks: Gradio's own bounds check prints a traceback per
        mistake, the service answers it with one line naming the field and its allowed values. (An
        instance attribute, not a subclass: Gradio writes a .pyi next to the module of a subclass.)"""
        component = gr.Slider(minimum, maximum, **kwargs)
        component.preprocess = lambda payload: payload  # type: ignore[method-assign]
        return component

    async def generate(
        prompt: str,
        negative: str,
        steps: float,
        guidance: float,
        width: float,
        height: float,
        seed: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - how Gradio injects progress
    ) -> tuple[Any, str]:
        from PIL import Image

        def on_progress(done: int, total: int) -> None:
            progress((done, total), desc=f"step {done} of {total}", unit="steps")

        key = request.session_hash or ""
        session = sessions.enter(key)
        try:
            progress(0, desc="queued")
            client = None
            if verifier is not None:  # the gate let the request in with this header: who is asking
                client = str(verifier.verify_header(request.headers.get("authorization"))["sub"])
            req = service.validate(_request_body(prompt, negative, steps, guidance, width, height, seed))
            out = await service.generate(req, client_gone=session.closed.wait, on_progress=on_progress, client=client)
        except ApiError as exc:
            service.cloudwatch.record_answer(exc.status)
            log.info("ui request not completed (%d): %s", exc.status, exc.message)
            raise gr.Error(exc.message, print_exception=False) from None
        except asyncio.CancelledError:  # Cancel pressed: the service has dropped the request
            service.cloudwatch.record_answer(_CLIENT_CLOSED)
            log.info("ui request cancelled")
            raise
        finally:
            sessions.leave(key, session)
        service.cloudwatch.record_answer(200)
        r = out.result
        info = (
            f"seed {out.seed} · {out.width}x{out.height} · {out.steps} steps · "
            f"queue {r.queue_s * 1000:.0f} ms · inference {r.inference_s * 1000:.0f} ms · batch of {r.batch_images}"
        )
        return Image.open(io.BytesIO(out.pngs[0])), info

    def tab_closed(request: gr.Request) -> None:
        dropped = sessions.close(request.session_hash or "")
        if dropped:
            log.info("ui tab closed: %d running generation(s) dropped", dropped)

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
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, max_length=limits.max_prompt_chars, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", max_length=limits.max_prompt_chars)
                with gr.Row():
                    steps = slider(
                        limits.min_steps,
                        limits.max_steps,
                        value=DEFAULT_STEPS_SD,
                        step=1,
                        label="Steps",
                        elem_id="steps",
                    )
                    guidance = slider(
                        limits.min_guidance, limits.max_guidance, value=7.5, step=0.5, label="Guidance scale"
                    )
                with gr.Row():
                    width, height = (
                        # A slider needs two values: one allowed size is shown, fixed (the service refuses others).
                        slider(
                            limits.min_size,
                            max(largest, limits.min_size + limits.size_multiple),
                            value=min(contract.DEFAULT_IMAGE_SIZE, largest),
                            step=limits.size_multiple,
                            label=label,
                            elem_id=label.lower(),
                            interactive=largest > limits.min_size,
                        )
                        for label, largest in (("Width", limits.max_width), ("Height", limits.max_height))
                    )
                seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)")
                with gr.Row():
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
                gr.Examples(examples=[[p] for p in EXAMPLE_PROMPTS], inputs=[prompt], label="Example prompts")
            with gr.Column():
                image = gr.Image(label="Image", type="pil", format="png", elem_id="image")
                info = gr.Markdown(elem_id="info")
        run = button.click(
            generate,
            inputs=[prompt, negative, steps, guidance, width, height, seed],
            outputs=[image, info],
            concurrency_limit=None,
            api_name="generate",
        )
        cancel.click(None, cancels=[run])
        demo.load(defaults, outputs=[steps, width, height, status])
        demo.unload(tab_closed)
    return demo


def mount_ui(app: "FastAPI", service: ImageService) -> "FastAPI":
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import gradio as gr

    verifier = getattr(app.state, "verifier", None)  # create_app's, in token mode
    return gr.mount_gradio_app(app, build_ui(service, verifier), path=contract.UI_PATH, footer_links=["api"])
