// The REST API: the same routes any client calls, with the key in the Authorization header. (The rules every module
// keeps: inspector.js.)

import { signOut } from "./session.js";
import { $, state } from "./state.js";

export class ApiError extends Error {
  constructor(status, error, message) {
    super(message);
    this.status = status;
    this.error = error;
  }

  describe() {
    return this.status ? `${this.error} (${this.status}): ${this.message}` : this.message;
  }
}

export class Stale extends Error {} // an answer for a contact or key that is no longer the page's

export const enc = encodeURIComponent;

export const NO_ANSWER = "chatdock did not answer";

export const READ_ONLY = "this server is read-only"; // how a --read-only server's 405 to a write begins

export async function call(method, path, { query = {}, body, raw = false } = {}) {
  const dots = path.split("/").find((segment) => segment === "." || segment === "..");
  if (dots !== undefined) {
    // a browser reads such a segment of a URL's path as a folder step (encoded or not) and would ask another route
    throw new ApiError(0, "Cannot open", `a browser cannot send the identifier "${dots}" in a URL; read or change it with chatdock's REST routes (curl) or its MCP tools`);
  }
  const url = new URL(path, location.origin);
  for (const [name, value] of Object.entries(query)) if (value !== null && value !== undefined) url.searchParams.set(name, value);
  const headers = { Authorization: `Bearer ${state.key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const generation = state.generation;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    throw new ApiError(0, "No answer", `${NO_ANSWER} (${error.message}); is the server running?`);
  }
  if (generation !== state.generation) throw new Stale();
  if (raw && response.ok) return response;
  const text = await response.text();
  if (generation !== state.generation) throw new Stale();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    // the server's words, its `command` quotes (written for a terminal) as a page's quotation marks
    const said = String(data?.message ?? text).replace(/`([^`]*)`/g, "“$1”");
    const error = new ApiError(response.status, data?.error ?? response.statusText, said);
    if (response.status === 401 && signedIn()) signOut(`The key was refused: ${error.message}`);
    throw error;
  }
  return data;
}

export function signedIn() {
  return !$("sign-out").hidden;
}
