/**
 * Run by server.test.ts in a child process, so that NODE_EXTRA_CA_CERTS (read once at start) is
 * the private CA or nothing: generates through the platform's fetch, the default transport, on the
 * fallback URL argv[2] with the token in EDGE_DIFFUSION_TOKEN, and prints one JSON line.
 */

import { ClientError, EdgeDiffusionClient } from "@edge-diffusion/client";

const [url] = process.argv.slice(2);
const client = new EdgeDiffusionClient({ fallbackUrls: [url!], token: process.env["EDGE_DIFFUSION_TOKEN"]!, onWarning: () => undefined });
try {
  const result = await client.generate({ prompt: "a cat", steps: 2, width: 64, height: 64, seed: 3 }, { deadlineMs: 60_000 });
  console.log(JSON.stringify({ served: result.endpoint.url, mediaType: result.mediaType, bytes: result.images[0]!.length, seed: result.seed }));
} catch (err) {
  if (!(err instanceof ClientError)) throw err;
  console.log(JSON.stringify({ error: err.message }));
}
