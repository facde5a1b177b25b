// What the page tells its user: the screen shown, the status line and the problem line; failures caught. (The rules
// every module keeps: inspector.js.)

import { ApiError, READ_ONLY, signedIn, Stale } from "./api.js";
import { loadChats, renderContact, renderTimeline } from "./contact.js";
import { $, state } from "./state.js";

export function show(view) {
  if (view !== state.view) $("status").textContent = ""; // a word on the screen left ("50 older messages loaded")
  state.view = view;
  // each tab and history entry named for what it shows (they were all "chatdock inspector")
  const shown = view === "contact" ? state.contact.contact_id : view === "sign-in" ? "Sign in" : state.search ? `“${state.search.q}”` : "Contacts";
  document.title = `${shown} · chatdock inspector`;
  for (const name of ["sign-in", "home", "contact"]) $(name).hidden = name !== view;
  const signedIn = view !== "sign-in";
  $("search").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
  $("who").hidden = !signedIn;
  $("search-scope-box").hidden = !state.scope;
  $("search-scope-name").textContent = state.scope ?? "";
  $("search-scope-name").title = state.scope ?? "";
  if (!state.scope) $("search-scope").checked = false;
}

export function say(message) {
  $("problem").textContent = "";
  $("status").textContent = message;
}

export function complain(message) {
  $("status").textContent = "";
  $("problem").textContent = message;
}

export function failed(error) {
  if (error instanceof Stale) return;
  if (error instanceof ApiError && error.status === 405 && error.message.startsWith(READ_ONLY)) {
    withoutWrites(); // the server was started again with --read-only since the page read its settings
    complain("The server is read-only now (it was restarted with --read-only): nothing was changed, and the page no longer offers writes.");
    return;
  }
  complain(error instanceof ApiError ? error.describe() : `Something went wrong in the page: ${error.message}`);
}

/** Offer writes as the key may (a key created with --read-only may not): the forms and buttons hide or show. On a
 * server that takes none they are gone already (`withoutWrites`). Called on signing in, before anything is drawn. */
export function writesFor(canWrite) {
  state.readOnly = state.serverReadOnly || !canWrite;
  for (const control of document.querySelectorAll(".writes")) control.hidden = state.readOnly;
}

/** Offer no write: the forms and buttons go, and what shows a contact is drawn again without them. */
export function withoutWrites() {
  state.readOnly = state.serverReadOnly = true;
  for (const control of document.querySelectorAll(".writes")) control.remove();
  for (const id of ["identifiers", "chats", "timeline"]) {
    $(id).replaceChildren();
    delete $(id).dataset.shown;
  }
  if (state.contact) {
    renderContact();
    renderTimeline();
    loadChats().catch(failed);
  }
}

const busy = new WeakSet(); // the buttons and forms whose action is on its way

/** An action of a button or form, its failure said on the page. While it is on its way the control does nothing
 * more and is marked busy: a second click on "More results" would read the same page twice. */
export function guarded(action) {
  return async (event) => {
    const control = event?.currentTarget instanceof Element ? event.currentTarget : null; // not the window's
    if (control && busy.has(control)) {
      if (event.type === "submit") event.preventDefault(); // a form's own submit would reload the page (and sign out)
      return;
    }
    if (control) {
      busy.add(control);
      control.setAttribute("aria-busy", "true");
    }
    $("problem").textContent = "";
    try {
      await action(event);
    } catch (error) {
      failed(error);
    } finally {
      if (control) {
        busy.delete(control);
        control.removeAttribute("aria-busy");
      }
    }
  };
}

export function submitted(action) {
  return guarded(async (event) => {
    event.preventDefault();
    await action(event);
  });
}
