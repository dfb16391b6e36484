// The console's only way to the server: the public HTTP API (docs/api.md),
// the same one third-party apps call. Every failure becomes an ApiError with
// the API's error.code and message, so a page always has something to show.

const TOKEN_KEY = "darkroom.session";

export class ApiError extends Error {
  code: string;
  status: number;
  details: Record<string, unknown>;

  constructor(status: number, code: string, message: string, details: Record<string, unknown> = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

const sessionListeners = new Set<() => void>();

export function sessionToken(): string | null {
  return localStorage.getItem(TOKEN_KEY);
}

export function setSessionToken(token: string | null) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
  sessionListeners.forEach((listener) => listener());
}

export function onSessionChange(listener: () => void): () => void {
  sessionListeners.add(listener);
  return () => {
    sessionListeners.delete(listener);
  };
}

export interface RequestOptions {
  body?: unknown;
  form?: FormData;
  query?: Record<string, string | number | boolean | null | undefined>;
  auth?: boolean;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export function apiUrl(path: string, query?: RequestOptions["query"]): string {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") params.set(name, String(value));
  }
  const search = params.toString();
  return search ? `${path}?${search}` : path;
}

/** Sends a request; answers the parsed JSON (null for 204) or throws ApiError. */
export async function api<T = any>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json", ...(options.headers || {}) };
  const token = sessionToken();
  if (token && options.auth !== false) headers.Authorization = `Bearer ${token}`;
  let body: BodyInit | undefined;
  if (options.form) body = options.form;
  else if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  let response: Response;
  try {
    response = await fetch(apiUrl(path, options.query), { method, headers, body, signal: options.signal });
  } catch (error) {
    if ((error as Error).name === "AbortError") throw error;
    throw new ApiError(0, "network_error", "The server could not be reached. Check your connection and try again.");
  }
  if (response.status === 204) return null as T;
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error;
    // the session itself was refused (expired, revoked, the account gone); other
    // 401s (a wrong password when re-authenticating, a TOTP code) keep it
    if (response.status === 401 && token && options.auth !== false && (!error || error.code === "unauthenticated")) {
      setSessionToken(null);
    }
    if (error && typeof error.code === "string") {
      throw new ApiError(response.status, error.code, error.message || error.code, error.details || {});
    }
    throw new ApiError(response.status, `http_${response.status}`, `The server answered ${response.status} ${response.statusText}.`);
  }
  return data as T;
}

export interface StreamEvent {
  event: string;
  data: string;
}

/** Reads a text/event-stream answer with the session's credential (an
 * EventSource cannot send one), calling ``onEvent`` for each event. */
export async function stream(path: string, onEvent: (event: StreamEvent) => void, signal: AbortSignal) {
  const headers: Record<string, string> = { Accept: "text/event-stream" };
  const token = sessionToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { headers, signal });
  if (!response.ok || !response.body) {
    let error: any = null;
    try {
      error = (await response.json()).error;
    } catch {
      error = null;
    }
    throw new ApiError(response.status, error?.code || `http_${response.status}`, error?.message || "The event stream failed.");
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end: number;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent({ event, data: data.join("\n") });
    }
  }
}

export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}
