"""What shares the server's event loop with the API: asyncio's own loop, and a Gradio queue that polls
as a person needs rather than a thousand times a second."""

from __future__ import annotations

import inspect

import gradio as gr
from gradio.queueing import Queue

from runtime.server import transport
from runtime.server.ui import UI_PROGRESS_POLL_S, UI_QUEUE_POLL_S, quiet_queue
from tests.runtime.server.conftest import RunningServer


def test_uvicorn_runs_on_asyncios_loop_whatever_is_installed() -> None:
    limits = transport.ConnectionLimits(max_connections=8, header_timeout_s=5, body_timeout_s=5, keep_alive_s=5)
    limiter = transport.ConnectionLimiter("api", limits)
    config = transport.uvicorn_config(object(), limiter, host="127.0.0.1", port=1, log_level="info", lifespan=False)
    assert config.loop == "asyncio"


def test_gradio_reads_the_intervals_quiet_queue_sets() -> None:
    """If Gradio renamed them, setting them would change nothing: its loops must read these names."""
    assert "self.sleep_when_free" in inspect.getsource(Queue.start_processing)
    assert "self.progress_update_sleep_when_free" in inspect.getsource(Queue.start_progress_updates)
    with gr.Blocks() as demo:
        gr.Markdown("x")
    quiet_queue(demo)
    assert demo._queue.sleep_when_free == UI_QUEUE_POLL_S >= 0.01
    assert demo._queue.progress_update_sleep_when_free == UI_PROGRESS_POLL_S


def test_the_servers_ui_queue_is_quiet(server: RunningServer) -> None:
    (mounted,) = [r for r in server.app.routes if getattr(r, "path", "") == "/ui"]
    blocks = mounted.app.get_blocks()
    assert blocks._queue.sleep_when_free == UI_QUEUE_POLL_S
