/**
 * The demo page: a camera frame (or an uploaded picture) and a text prompt go to the inference
 * server through EdgeDiffusionClient, and the answer is drawn on a canvas over the camera view.
 * The page's own origin is the client's only fallback URL: its server (serve.mjs) forwards the
 * API, so nothing leaves the origin and the inference server needs no CORS.
 */

import { EdgeDiffusionClient, type GenerationResult, type ImageFormat, type ImageRequest } from "@edge-diffusion/client";

/** The side of the square frame sent as the image prompt (the server resizes it to the output size). */
const FRAME_SIZE = 512;
const DEADLINE_MS = 60_000;
const QUALITY = 85;

function element<T extends HTMLElement>(id: string, kind: { new (): T; readonly prototype: T }): T {
  const found = document.getElementById(id);
  if (!(found instanceof kind)) throw new Error(`the page has no #${id}`);
  return found;
}

const camera = element("camera", HTMLVideoElement);
const picture = element("picture", HTMLImageElement);
const overlay = element("overlay", HTMLCanvasElement);
const form = element("controls", HTMLFormElement);
const sourceCamera = element("source-camera", HTMLInputElement);
const sourcePicture = element("source-picture", HTMLInputElement);
const upload = element("upload", HTMLInputElement);
const prompt = element("prompt", HTMLTextAreaElement);
const strength = element("strength", HTMLInputElement);
const strengthValue = element("strength-value", HTMLOutputElement);
const steps = element("steps", HTMLInputElement);
const format = element("format", HTMLSelectElement);
const opacity = element("opacity", HTMLInputElement);
const opacityValue = element("opacity-value", HTMLOutputElement);
const generateButton = element("generate", HTMLButtonElement);
const cancelButton = element("cancel", HTMLButtonElement);
const latency = element("latency", HTMLParagraphElement);
const errorLine = element("error", HTMLParagraphElement);
const status = element("status", HTMLParagraphElement);

const client = new EdgeDiffusionClient({
  fallbackUrls: [window.location.origin],
  // "plain http" for the page's own loopback origin: worth a console line, not the error line.
  onWarning: (message) => console.info(`edge-diffusion: ${message}`),
});

let running: AbortController | null = null;

/** Any failure as one line: the SDK's errors already are; others lose their line breaks. */
function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message || err.name : String(err);
  return text.split(/\s+/).filter(Boolean).join(" ");
}

function showError(err: unknown): void {
  errorLine.textContent = oneLine(err);
}

function ms(value: number | null): string {
  return value === null ? "?" : `${Math.round(value)} ms`;
}

// --- the view --------------------------------------------------------------------------------

function showSource(): void {
  const usePicture = sourcePicture.checked;
  picture.hidden = !usePicture;
  camera.hidden = usePicture;
}

async function startCamera(): Promise<void> {
  if (!navigator.mediaDevices?.getUserMedia) {
    const where = window.isSecureContext ? "this browser" : `${window.location.origin} (not https or localhost)`;
    throw new Error(`no camera in ${where}; upload a picture instead`);
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { facingMode: "environment", width: { ideal: 1280 }, height: { ideal: 720 } },
    audio: false,
  });
  camera.srcObject = stream;
  await camera.play();
}

function loadPicture(file: File): void {
  if (!["image/png", "image/jpeg", "image/webp"].includes(file.type)) {
    showError(`${file.name}: ${file.type || "unknown type"} is not allowed; allowed: PNG, JPEG or WebP`);
    return;
  }
  const previous = picture.src;
  picture.onerror = () => showError(`${file.name}: this browser cannot read it as a picture; allowed: PNG, JPEG or WebP`);
  picture.src = URL.createObjectURL(file);
  if (previous.startsWith("blob:")) URL.revokeObjectURL(previous);
  sourcePicture.checked = true;
  showSource();
  errorLine.textContent = "";
}

/**
 * The visible part of the source (the stage crops to a square, as object-fit: cover does) as a
 * JPEG data URL: it goes in the JSON body, which every platform's fetch can send.
 */
function captureFrame(): string {
  let source: HTMLVideoElement | HTMLImageElement;
  let width: number;
  let height: number;
  if (sourcePicture.checked) {
    if (!picture.src || !picture.complete || picture.naturalWidth === 0) throw new Error("no picture yet: upload a PNG, JPEG or WebP");
    [source, width, height] = [picture, picture.naturalWidth, picture.naturalHeight];
  } else {
    if (camera.readyState < HTMLMediaElement.HAVE_CURRENT_DATA || camera.videoWidth === 0) {
      throw new Error("the camera has no frame yet: allow camera access, or upload a picture");
    }
    [source, width, height] = [camera, camera.videoWidth, camera.videoHeight];
  }
  const side = Math.min(width, height);
  const frame = document.createElement("canvas");
  frame.width = frame.height = FRAME_SIZE;
  const context = frame.getContext("2d");
  if (!context) throw new Error("this browser gives no 2D canvas");
  context.drawImage(source, (width - side) / 2, (height - side) / 2, side, side, 0, 0, FRAME_SIZE, FRAME_SIZE);
  return frame.toDataURL("image/jpeg", 0.9);
}

async function drawOverlay(result: GenerationResult): Promise<string> {
  const bytes = result.images[0];
  if (!bytes) throw new Error("the answer held no image");
  const bitmap = await createImageBitmap(new Blob([bytes.slice()], { type: result.mediaType }));
  try {
    overlay.width = bitmap.width;
    overlay.height = bitmap.height;
    const context = overlay.getContext("2d");
    if (!context) throw new Error("this browser gives no 2D canvas");
    context.drawImage(bitmap, 0, 0);
    return `${bitmap.width}x${bitmap.height}`;
  } finally {
    bitmap.close();
  }
}

// --- generating ------------------------------------------------------------------------------

function request(image: string): ImageRequest {
  const stepCount = steps.value.trim() === "" ? undefined : Number(steps.value);
  if (stepCount !== undefined && !(Number.isInteger(stepCount) && stepCount >= 1)) {
    throw new Error(`steps ${JSON.stringify(steps.value)}: allowed a whole number from 1, or empty for the server's default`);
  }
  return {
    prompt: prompt.value,
    image,
    strength: Number(strength.value),
    responseFormat: format.value as ImageFormat,
    quality: QUALITY,
    ...(stepCount !== undefined ? { steps: stepCount } : {}),
  };
}

async function generate(): Promise<void> {
  errorLine.textContent = "";
  const controller = new AbortController();
  running = controller;
  generateButton.disabled = true;
  cancelButton.disabled = false;
  const from = sourcePicture.checked ? "picture" : "camera frame";
  const started = performance.now();
  latency.textContent = `generating from the ${from}…`;
  try {
    const image = captureFrame();
    const captured = performance.now();
    const result = await client.generate(request(image), { deadlineMs: DEADLINE_MS, signal: controller.signal });
    const size = await drawOverlay(result);
    const total = performance.now() - started;
    const { timings, serverTimings: server } = result;
    latency.textContent =
      `${from} → ${size} ${result.mediaType.replace("image/", "")}: total ${ms(total)} ` +
      `(frame ${ms(captured - started)}, SDK ${ms(timings.totalMs)}) · ` +
      `server: queue ${ms(server.queueMs)}, inference ${ms(server.inferenceMs)}, batch ${server.batchSize ?? "?"}` +
      (result.seed !== null ? ` · seed ${result.seed}` : "");
    overlay.dataset["source"] = sourcePicture.checked ? "picture" : "camera";
  } catch (err) {
    latency.textContent = "";
    showError(err);
  } finally {
    running = null;
    generateButton.disabled = false;
    cancelButton.disabled = true;
  }
}

/** GET /readyz through the page's server until the inference server takes images. */
async function watchReadiness(): Promise<void> {
  for (;;) {
    let line: string;
    let ready = false;
    try {
      const answer = await fetch("/readyz", { cache: "no-store" });
      const body = (await answer.json()) as { ready?: boolean; state?: string; reason?: string; error?: string };
      ready = body.ready === true;
      // body.error: the demo server's one line when the inference server is down
      line = ready ? "inference server ready" : body.error ?? `inference server not ready: ${body.state} (${body.reason})`;
    } catch (err) {
      line = `inference server unreachable: ${oneLine(err)}`;
    }
    status.textContent = line;
    if (ready) return;
    await new Promise((done) => setTimeout(done, 2000));
  }
}

// --- wiring ----------------------------------------------------------------------------------

function syncOutputs(): void {
  strengthValue.value = strength.value;
  opacityValue.value = opacity.value;
  overlay.style.opacity = opacity.value;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!running) void generate();
});
cancelButton.addEventListener("click", () => running?.abort(new Error("cancelled")));
upload.addEventListener("change", () => {
  const file = upload.files?.[0];
  if (file) loadPicture(file);
});
sourceCamera.addEventListener("change", showSource);
sourcePicture.addEventListener("change", showSource);
strength.addEventListener("input", syncOutputs);
opacity.addEventListener("input", syncOutputs);

syncOutputs();
showSource();
void watchReadiness();
startCamera().catch((err: unknown) => showError(`camera: ${oneLine(err)}`));
