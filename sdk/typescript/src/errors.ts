import type { Attempt } from "./types.js";

/** The client could not produce an image; the message is one line for a person. */
export class ClientError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ClientError";
  }
}

/** An endpoint rejected the request itself (a 4xx other than 429): no other endpoint would accept it. */
export class RequestRejectedError extends ClientError {
  readonly status: number;
  /** The request field the server named (its error answer's `field`), when it named one. */
  readonly field: string | null;
  /** The server's X-Request-Id (or its error answer's `request_id`). */
  readonly requestId: string | null;

  constructor(status: number, message: string, field: string | null = null, requestId: string | null = null) {
    super(`request rejected (${status}): ${message}`);
    this.name = "RequestRejectedError";
    this.status = status;
    this.field = field;
    this.requestId = requestId;
  }
}

/** No endpoint produced an image before the deadline; `attempts` says what each did. */
export class NoEndpointError extends ClientError {
  readonly attempts: readonly Attempt[];

  constructor(message: string, attempts: readonly Attempt[] = []) {
    super(message);
    this.name = "NoEndpointError";
    this.attempts = attempts;
  }
}

/** No usable bearer token; the message is one line for a person. */
export class TokenError extends ClientError {
  constructor(message: string) {
    super(message);
    this.name = "TokenError";
  }
}
