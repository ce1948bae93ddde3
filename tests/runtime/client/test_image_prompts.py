"""Image prompts and answer formats without servers: what goes on the wire (JSON or multipart, as the
TypeScript SDK sends it), what is refused before any request, and how the CLI names its output."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import functools
from pathlib import Path
from typing import Any

import httpx
import pytest

from plan import contract
from runtime.client import cli
from runtime.client import client as c
from runtime.client.cli import main

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 16
WEBP = b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 8
PROG = "python -m runtime.client"
URL = "https://serve.test"


class Recorder:
    """httpx transport: healthy, records every POST, answers with ``answer``."""

    def __init__(self, answer: httpx.Response | None = None) -> None:
        self.answer = answer or httpx.Response(200, json={"images": [base64.b64encode(PNG).decode()], "seed": 7})
        self.posts: list[httpx.Request] = []
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if request.url.path == contract.HEALTH_PATH:
            return httpx.Response(200, json={"status": "alive"})
        request.read()
        self.posts.append(request)
        return self.answer


def client_for(net: Recorder) -> c.EdgeDiffusionClient:
    return c.EdgeDiffusionClient(fallback_urls=[URL], http=httpx.Client(transport=httpx.MockTransport(net)))


def form_parts(request: httpx.Request) -> dict[str, tuple[str | None, str | None, bytes]]:
    """name -> (filename, content type, bytes) of a multipart/form-data request."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    parts: dict[str, tuple[str | None, str | None, bytes]] = {}
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        kind = part.get("Content-Type")
        parts[str(part.get_param("name", header="content-disposition"))] = (part.get_filename(), kind, payload)
    return parts


def test_the_limits_and_formats_are_the_servers() -> None:
    from runtime.server import codec, protocol

    assert codec.InputLimits().max_bytes == c.MAX_IMAGE_BYTES
    assert c.IMAGE_FORMATS == codec.OUTPUT_FORMATS and c.MEDIA_TYPES == codec.MEDIA_TYPES
    assert c.RESPONSE_FORMATS == protocol.RESPONSE_FORMATS


def test_json_body_has_the_sdks_wire_names_and_order() -> None:
    request = c.ImageRequest(
        prompt="a cat",
        guidance_scale=2,
        seed=3,
        response_format="json",
        output_format="webp",
        quality=70,
        image="data:image/png;base64," + base64.b64encode(PNG).decode(),
        strength=1,
    )
    body = request.encode()["json"]
    assert list(body) == [
        "prompt",
        "guidance_scale",
        "seed",
        "num_images",
        "response_format",
        "output_format",
        "quality",
        "image",
        "strength",
    ]
    assert body["guidance_scale"] == 2.0 and isinstance(body["strength"], float)
    assert c.ImageRequest(prompt="a cat").encode() == {
        "json": {"prompt": "a cat", "num_images": 1, "response_format": "json"}
    }


@pytest.mark.parametrize(
    ("image", "filename", "kind"),
    [
        (PNG, "image.png", "image/png"),
        (JPEG, "image.jpeg", "image/jpeg"),
        (bytearray(WEBP), "image.webp", "image/webp"),
    ],
)
def test_image_bytes_go_as_a_multipart_file_part(image: bytes, filename: str, kind: str) -> None:
    net = Recorder()
    request = c.ImageRequest(prompt="a cat", steps=2, guidance_scale=1.5, image=image, strength=0.25)
    with client_for(net) as client:
        result = client.generate(request, deadline_s=10)
    assert result.images == [PNG] and result.media_type == "image/png"
    (post,) = net.posts
    assert post.headers["content-type"].startswith("multipart/form-data; boundary=")
    parts = form_parts(post)
    assert parts.pop("image") == (filename, kind, bytes(image))
    texts = {name: payload.decode() for name, (_, _, payload) in parts.items()}
    assert texts == {
        "prompt": "a cat",
        "steps": "2",
        "guidance_scale": "1.5",
        "num_images": "1",
        "response_format": "json",
        "strength": "0.25",
    }


def test_an_image_path_is_read_and_sent_as_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(JPEG)
    net = Recorder()
    with client_for(net) as client:
        client.generate(c.ImageRequest(prompt="a cat", image=path), deadline_s=10)
    assert form_parts(net.posts[0])["image"] == ("image.jpeg", "image/jpeg", JPEG)


def big_file(path: Path) -> Path:
    with path.open("wb") as out:
        out.truncate(c.MAX_IMAGE_BYTES + 1)  # sparse: no 8 MiB written
    return path


ALLOWED = f"allowed: a PNG, JPEG or WebP image of at most {c.MAX_IMAGE_BYTES} bytes"


def refusals(tmp_path: Path) -> list[tuple[Any, str]]:
    gif = tmp_path / "a.gif"
    gif.write_bytes(b"GIF89a" + b"\0" * 10)
    big = big_file(tmp_path / "big.png")
    return [
        (b"GIF89a", f"image: not a PNG, JPEG or WebP image (by its first bytes); {ALLOWED}"),
        (PNG + b"\0" * c.MAX_IMAGE_BYTES, f"image: {len(PNG) + c.MAX_IMAGE_BYTES} bytes is too large; {ALLOWED}"),
        (tmp_path / "none.png", f"image '{tmp_path / 'none.png'}': No such file or directory"),
        (tmp_path, f"image '{tmp_path}': not a file; {ALLOWED}"),
        (gif, f"image '{gif}': not a PNG, JPEG or WebP image (by its first bytes); {ALLOWED}"),
        (big, f"image '{big}': {c.MAX_IMAGE_BYTES + 1} bytes is too large; {ALLOWED}"),
        (
            "photo.png",
            "image 'photo.png': not base64 or a data:image/...;base64, URL "
            "(give a file's bytes, or its path as a pathlib.Path)",
        ),
        (base64.b64encode(b"GIF89a").decode(), f"image: not a PNG, JPEG or WebP image (by its first bytes); {ALLOWED}"),
        (12, "image: a int; allowed: bytes, a path, or base64 text or a data URL"),
    ]


def test_a_bad_image_prompt_is_one_line_before_any_request(tmp_path: Path) -> None:
    for image, message in refusals(tmp_path):
        net = Recorder()
        with client_for(net) as client, pytest.raises(c.ClientError) as err:
            client.generate(c.ImageRequest(prompt="a cat", image=image), deadline_s=10)
        assert str(err.value) == message
        assert net.requests == 0  # not even a probe


def test_an_unreadable_image_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(PNG)

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)  # as chmod 0 would, for a user other than root
    with pytest.raises(c.ClientError) as err:
        c.read_image(path, "--image")
    assert str(err.value) == f"--image '{path}': cannot read it (Permission denied)"


@pytest.mark.parametrize(
    ("kind", "data", "headers"),
    [
        ("image/jpeg", JPEG, {"X-Seed": "5", "X-Queue-Ms": "1.5", "X-Inference-Ms": "20", "X-Batch-Size": "2"}),
        ("image/webp", WEBP, {"X-Seed": "5", "X-Queue-Ms": "1.5", "X-Inference-Ms": "20", "X-Batch-Size": "2"}),
    ],
)
def test_binary_answers_keep_their_type_seed_and_timings(kind: str, data: bytes, headers: dict[str, str]) -> None:
    net = Recorder(httpx.Response(200, content=data, headers={"content-type": kind, **headers}))
    fmt = kind.removeprefix("image/")
    with client_for(net) as client:
        result = client.generate(c.ImageRequest(prompt="a cat", response_format=fmt, quality=50), deadline_s=10)
    assert (result.images, result.media_type, result.seed) == ([data], kind, 5)
    assert result.server_timings == {"queue_ms": 1.5, "inference_ms": 20.0, "batch_size": 2}


def test_a_json_answers_type_comes_from_its_images() -> None:
    net = Recorder(httpx.Response(200, json={"images": [base64.b64encode(WEBP).decode()], "output_format": "webp"}))
    with client_for(net) as client:
        result = client.generate(c.ImageRequest(prompt="a cat", output_format="webp"), deadline_s=10)
    assert result.media_type == "image/webp"


# --- the command line -----------------------------------------------------------------------------


def cli_errors(tmp_path: Path) -> list[tuple[list[str], str]]:
    png = tmp_path / "in.png"
    png.write_bytes(PNG)
    gif = tmp_path / "in.gif"
    gif.write_bytes(b"GIF89a")
    out = tmp_path / "out.png"
    return [
        (
            ["-o", str(out), "--format", "jpeg"],
            f"--output '{out}' does not name a jpeg file; allowed with --format jpeg: a name ending .jpg or .jpeg",
        ),
        (
            ["-o", str(tmp_path / "out"), "--format", "webp"],
            f"--output '{tmp_path / 'out'}' does not name a webp file; allowed with --format webp: a name ending .webp",
        ),
        (
            ["-o", str(tmp_path / "out.gif")],
            f"--output '{tmp_path / 'out.gif'}': no image extension to tell the format; "
            "allowed: .png, .jpg, .jpeg, .webp (or give --format)",
        ),
        (["-o", str(out), "--quality", "50"], "--quality 50: only for jpeg or webp output; this output is png"),
        (["--format", "gif"], "argument --format: 'gif' is not allowed; allowed: png, jpeg, webp"),
        (
            ["-o", str(tmp_path / "o.jpg"), "--quality", "0"],
            "argument --quality: '0' is not allowed; allowed: an integer from 1 to 100",
        ),
        (["--strength", "0.5"], "--strength 0.5: only with --image (how far to move from it)"),
        (
            ["--image", str(png), "--strength", "0"],
            "argument --strength: '0' is not allowed; allowed: a number above 0 and at most 1",
        ),
        (["--image", str(tmp_path / "none.png")], f"--image '{tmp_path / 'none.png'}': No such file or directory"),
        (["--image", str(gif)], f"--image '{gif}': not a PNG, JPEG or WebP image (by its first bytes); {ALLOWED}"),
        (
            ["--image", str(big_file(tmp_path / "big.png"))],
            f"--image '{tmp_path / 'big.png'}': {c.MAX_IMAGE_BYTES + 1} bytes is too large; {ALLOWED}",
        ),
    ]


def test_cli_refusals_are_one_line_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_client(**_: Any) -> None:
        raise AssertionError("a client was made")

    monkeypatch.setattr(cli, "EdgeDiffusionClient", no_client)
    for args, message in cli_errors(tmp_path):
        assert main(["a cat", "--fallback-url", URL, *args]) == 2, args
        assert capsys.readouterr().err.splitlines() == [f"{PROG}: error: {message}"]


def patched_cli(monkeypatch: pytest.MonkeyPatch, net: Recorder) -> None:
    http = httpx.Client(transport=httpx.MockTransport(net))
    monkeypatch.setattr(cli, "EdgeDiffusionClient", functools.partial(c.EdgeDiffusionClient, http=http))


@pytest.mark.parametrize(
    ("args", "name", "fields"),
    [
        (["-o", "out.jpg"], "out.jpg", {"output_format": "jpeg"}),
        (
            ["-o", "out.JPEG", "--format", "jpeg", "--quality", "75"],
            "out.JPEG",
            {"output_format": "jpeg", "quality": 75},
        ),
        (["-o", "out.png"], "out.png", {}),  # png: the default, left unsaid for servers before output_format
    ],
)
def test_cli_asks_for_the_outputs_format_and_writes_it(
    args: list[str], name: str, fields: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = PNG if name.endswith(".png") else JPEG
    net = Recorder(httpx.Response(200, json={"images": [base64.b64encode(data).decode()], "seed": 1}))
    patched_cli(monkeypatch, net)
    monkeypatch.chdir(tmp_path)
    assert main(["a cat", "--fallback-url", URL, *args]) == 0
    body = net.posts[0].read()
    assert httpx.Response(200, content=body).json() == {
        "prompt": "a cat",
        "num_images": 1,
        "response_format": "json",
        **fields,
    }
    assert (tmp_path / name).read_bytes() == data


def test_cli_sends_the_image_file_and_strength_as_multipart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "in.webp"
    image.write_bytes(WEBP)
    net = Recorder()
    patched_cli(monkeypatch, net)
    assert (
        main(
            ["a cat", "--fallback-url", URL, "-o", str(tmp_path / "o.png"), "--image", str(image), "--strength", "0.3"]
        )
        == 0
    )
    parts = form_parts(net.posts[0])
    assert parts["image"] == ("image.webp", "image/webp", WEBP)
    assert parts["strength"][2] == b"0.3"


def test_cli_writes_nothing_when_the_answer_is_not_the_format_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    patched_cli(monkeypatch, Recorder())  # answers PNG, as a server that ignores output_format would
    out = tmp_path / "out.webp"
    assert main(["a cat", "--fallback-url", URL, "-o", str(out)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{PROG}: error: fallback {URL} answered image/png, not the image/webp asked for; nothing written"
    ]
    assert not out.exists()
