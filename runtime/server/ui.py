"""Gradio 6 UI mounted at contract.UI_PATH, calling the same service (and batcher) as the REST API.

The click handler has no Gradio concurrency limit: admission control is the service's
(runtime.server.admission: size caps, device time, per-client limits, the batcher's bounded
queue), so UI users and API clients are batched together and treated alike. In token mode the
UI's requests carry a bearer token (the app's gate checks it); its ``sub`` is the client the
per-client limits count, as for the REST API.
An optional image prompt (an upload or the browser's camera) goes to the service as the
request's base64 PNG `image`, with the `strength` slider that appears once an image is given.
A generation shows its real denoising progress (step i of n, reported by the device thread),
and stops when the user presses Cancel (the page then says "Cancelled") or closes the tab (the
session's unload event): the batcher drops the request and, when nobody else shares its batch,
stops the device at the next step. Cancel is a handler of ours, not Gradio's `cancels`: a
cancelled Gradio event can leave a red "Error" on the image, ours ends the generation normally.
Input mistakes are answered with the API's own one-line messages. With the tiny model (random
weights) the page says that its pictures are noise. It depends on the service, never on the app:
the app mounts it.
It works offline: no analytics, the theme's fonts are served by Gradio itself.
"""

# No `from __future__ import annotations`: Gradio finds gr.Request and gr.Progress parameters by
# their evaluated annotations, and gradio is imported inside build_ui (after OFFLINE_ENV is set).
import asyncio
import base64
import io
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from PIL import Image

from plan import contract
from runtime.server.backends import DEFAULT_STEPS_SD
from runtime.server.protocol import DEFAULT_STRENGTH, ApiError
from runtime.server.service import ImageService
from runtime.server.tiny import TINY_MODEL_ID

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
TINY_NOTICE: Final = (
    "**The tiny model has random weights: its pictures are noise, whatever the prompt or image.** "
    "It is here to try the server and this page out; serve a real model (`--model`) for real pictures."
)
# Off unless the operator turns them on: the UI never phones home.
UI_QUEUE_POLL_S: Final = 0.02  # how often an idle UI queue looks for a click to run
UI_PROGRESS_POLL_S: Final = 0.1  # how often a running UI generation's progress is sent to the page
OFFLINE_ENV: Final = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass
class _Session:
    """One browser tab's running generations: `stop` is set when Cancel is pressed or the tab goes away."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    active: int = 0
    cancelled: bool = False  # stopped by Cancel (not by the tab closing)
    step: tuple[int, int] | None = None  # the last denoising step reported (done, total)

    def cancelled_text(self) -> str:
        """What the page says about a generation Cancel stopped."""
        return "Cancelled after step {} of {}.".format(*self.step) if self.step else "Cancelled before its first step."


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

    def stop(self, key: str, *, cancelled: bool) -> int:
        """Drop the tab's running generations (Cancel pressed, or the tab closed). Returns how many.

        The session leaves the table at once: a generation started after this gets a fresh one.
        """
        session = self._open.pop(key, None)
        if session is None:
            return 0
        session.cancelled = cancelled
        session.stop.set()
        return session.active


def _png_base64(image: Any, width: Any, height: Any) -> str:
    """A PIL image as the API's `image` field: base64 of its PNG.

    The service centre-crops an image prompt to width x height, so a larger picture (a phone's
    photo) is first shrunk, aspect kept, to the least that still covers that size: its PNG then
    stays well under the API's byte limit, which a phone's JPEG re-encoded as a full-size PNG can pass.
    """
    picture = image.convert("RGB")  # the camera's frames may carry alpha
    if _is_number(width) and _is_number(height) and width > 0 and height > 0:
        scale = max(width / picture.width, height / picture.height)
        if scale < 1:
            size = (max(round(picture.width * scale), int(width)), max(round(picture.height * scale), int(height)))
            picture = picture.resize(size, resample=Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _request_body(
    prompt: str,
    negative: str,
    steps: Any,
    guidance: Any,
    width: Any,
    height: Any,
    seed: Any,
    image: Any = None,
    strength: Any = None,
) -> dict[str, Any]:
    """The REST request the form describes; the service validates it like any other.

    `image` (a PIL image, or None) and `strength` are sent only with an image prompt.
    """

    def whole(value: Any) -> Any:
        return int(value) if isinstance(value, float) and value.is_integer() else value

    prompt_image: dict[str, Any] = {}
    if image is not None:
        encoded = _png_base64(image, width, height)
        prompt_image = {"image": encoded, "strength": float(strength) if _is_number(strength) else strength}
    return {
        "prompt": prompt or "",
        "negative_prompt": negative or None,
        "steps": whole(steps),
        "guidance_scale": float(guidance) if isinstance(guidance, int | float) else guidance,
        "width": whole(width),
        "height": whole(height),
        "seed": None if seed is None or (isinstance(seed, int | float) and seed < 0) else whole(seed),
        **prompt_image,
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
        image_prompt: Any,
        strength: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - how Gradio injects progress
    ) -> tuple[Any, str]:
        def on_progress(done: int, total: int) -> None:
            session.step = (done, total)
            progress((done, total), desc=f"step {done} of {total}", unit="steps")

        key = request.session_hash or ""
        session = sessions.enter(key)
        try:
            progress(0, desc="queued")
            client = None
            if verifier is not None:  # the gate let the request in with this header: who is asking
                client = str(verifier.verify_header(request.headers.get("authorization"))["sub"])
            body = _request_body(prompt, negative, steps, guidance, width, height, seed, image_prompt, strength)
            req = service.validate(body)
            out = await service.generate(req, client_gone=session.stop.wait, on_progress=on_progress, client=client)
        except ApiError as exc:
            service.cloudwatch.record_answer(exc.status)
            if session.cancelled and exc.status == _CLIENT_CLOSED:  # Cancel pressed: the service dropped it
                log.info("ui request cancelled (Cancel pressed)")
                return gr.update(), session.cancelled_text()
            log.info("ui request not completed (%d): %s", exc.status, exc.message)
            raise gr.Error(exc.message, print_exception=False) from None
        except asyncio.CancelledError:  # Gradio cancelled the event (its client went away): the service dropped it
            service.cloudwatch.record_answer(_CLIENT_CLOSED)
            log.info("ui request cancelled by Gradio")
            raise
        finally:
            sessions.leave(key, session)
        service.cloudwatch.record_answer(200)
        r = out.result
        info = (
            f"seed {out.seed} · {out.width}x{out.height} · {out.steps} steps · "
            f"queue {r.queue_s * 1000:.0f} ms · inference {r.inference_s * 1000:.0f} ms · batch of {r.batch_images}"
        )
        used = getattr(req, "strength", None) if image_prompt is not None else None
        if used is not None:
            info += f" · image prompt at strength {used:g}"
        return Image.open(io.BytesIO(out.pngs[0])), info

    def cancel_pressed(request: gr.Request) -> None:
        stopped = sessions.stop(request.session_hash or "", cancelled=True)
        if stopped:
            log.info("ui Cancel pressed: %d running generation(s) dropped", stopped)

    def prompt_image_changed(image: Any) -> Any:
        """Strength means something only with an image prompt: the slider shows while there is one."""
        return gr.update(visible=image is not None)

    def tab_closed(request: gr.Request) -> None:
        dropped = sessions.stop(request.session_hash or "", cancelled=False)
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
        if service.settings.model_id == TINY_MODEL_ID:
            gr.Markdown(TINY_NOTICE, elem_id="noise-notice")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", lines=2, max_length=limits.max_prompt_chars, elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", max_length=limits.max_prompt_chars)
                image_prompt = gr.Image(
                    label="Image prompt (optional): upload a picture or take one with the camera",
                    sources=["upload", "webcam"],
                    type="pil",
                    height=280,
                    webcam_options=gr.WebcamOptions(mirror=False),  # the picture as the camera sees it
                    elem_id="image-prompt",
                )
                strength = slider(
                    0.05,
                    1.0,
                    value=DEFAULT_STRENGTH,
                    step=0.05,
                    label="Strength: how far from the image prompt (1: all the way)",
                    elem_id="strength",
                    visible=False,
                )
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
        button.click(
            generate,
            inputs=[prompt, negative, steps, guidance, width, height, seed, image_prompt, strength],
            outputs=[image, info],
            concurrency_limit=None,
            api_name="generate",
        )
        # Outside the queue: a Cancel never waits behind anything.
        cancel.click(cancel_pressed, queue=False, show_progress="hidden", api_visibility="private")
        image_prompt.change(
            prompt_image_changed,
            inputs=[image_prompt],
            outputs=[strength],
            show_progress="hidden",
            queue=False,
            preprocess=False,  # whether there is an image, not the image itself
            api_visibility="private",
        )
        demo.load(defaults, outputs=[steps, width, height, status])
        demo.unload(tab_closed)
    return demo


def mount_ui(app: "FastAPI", service: ImageService) -> "FastAPI":
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import gradio as gr

    verifier = getattr(app.state, "verifier", None)  # create_app's, in token mode
    demo = build_ui(service, verifier)
    quiet_queue(demo)
    return gr.mount_gradio_app(app, demo, path=contract.UI_PATH, footer_links=["api"])


def quiet_queue(demo: Any) -> None:
    """Let Gradio's queue poll as a person needs, not 1,000 times a second.

    On Linux an idle Gradio queue wakes every 1 ms to look for work, and its progress loop every
    10 ms: on the event loop the API shares, each wake-up takes the GIL from a pipeline running in
    the server's process and delays a request being parsed (docs/benchmarks.md, server efficiency).
    A UI click now waits up to UI_QUEUE_POLL_S to start; progress shows every UI_PROGRESS_POLL_S."""
    queue = demo._queue  # Blocks() made it; mount_gradio_app starts its loops with these intervals
    queue.sleep_when_free = UI_QUEUE_POLL_S
    queue.progress_update_sleep_when_free = UI_PROGRESS_POLL_S
