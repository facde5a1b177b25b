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

export const PATIENCE = 30000; // ms a request may take before the page stops waiting and says so

export const WAITING = "Waiting for chatdock…";

let pending = 0; // requests on their way
let waiting = null; // the timer that says so in the status line after a second

/** A request went out (+1) or ended (-1): after a second with one on its way the status line says the page is
 * waiting, so a slow or hung server is never a page that seems to ignore a click; it goes when none is left. */
function underway(change) {
  pending += change;
  if (change > 0 && pending === 1) waiting = setTimeout(() => ($("status").textContent = WAITING), 1000);
  if (pending === 0) {
    clearTimeout(waiting);
    if ($("status").textContent === WAITING) $("status").textContent = "";
  }
}

export async function call(method, path, options = {}) {
  underway(1);
  try {
    return await request(method, path, options);
  } finally {
    underway(-1);
  }
}

async function request(method, path, { query = {}, body, raw = false } = {}) {
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
  // a server that takes the request and never answers (stopped, hung, a dropped network) is given up on
  const patience = new AbortController();
  const impatient = setTimeout(() => patience.abort(), PATIENCE);
  let response;
  let text;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      signal: patience.signal,
    });
    if (raw && response.ok) {
      clearTimeout(impatient); // a download's body takes what it takes
      if (generation !== state.generation) throw new Stale();
      return response;
    }
    text = await response.text();
  } catch (error) {
    if (error instanceof Stale) throw error;
    const why = patience.signal.aborted ? `within ${PATIENCE / 1000} s` : `(${error.message})`;
    throw new ApiError(0, "No answer", `${NO_ANSWER} ${why}; is the server running?`);
  } finally {
    clearTimeout(impatient);
  }
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
  answersAgain();
  return data;
}

/** The server answered: a problem line saying it did not goes (whatever the screen: the list has no stream). */
export function answersAgain() {
  if ($("problem").textContent.startsWith(NO_ANSWER)) $("problem").textContent = "";
}

export function signedIn() {
  return !$("sign-out").hidden;
}
