// Writes, each confirmed first in an accessible dialog. (The rules every module keeps: inspector.js.)

import { ApiError, call, enc } from "./api.js";
import { follow, loadChats, renderContact, renderTimeline, serially } from "./contact.js";
import { goHome } from "./contacts.js";
import { say } from "./feedback.js";
import { $, state } from "./state.js";
import { capitalized, chatName, timeFormat, visibleString } from "./text.js";

function confirmed(title, text, action) {
  const dialog = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = action;
  dialog.returnValue = "";
  const opener = document.activeElement;
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        if (opener?.isConnected) opener.focus();
        resolve(dialog.returnValue === "confirm");
      },
      { once: true },
    );
  });
}

/** The message shown nearest after `node`, else before it (a hidden channel's cannot take the focus). */
function shownBeside(node) {
  for (const step of ["nextElementSibling", "previousElementSibling"]) {
    for (let next = node?.[step]; next; next = next[step]) if (!next.hidden) return next;
  }
  return null;
}

export async function remove(message) {
  const content = visibleString(message.content);
  const shortened = content.length > 80 ? `${content.slice(0, 80)}…` : content;
  const sure = await confirmed(
    "Delete this message?",
    `The ${message.role} message of ${timeFormat.format(new Date(message.created_at))} on ${message.channel} (“${shortened}”) is deleted for good.`,
    "Delete message",
  );
  if (!sure) return;
  const node = $(`m-${message.id}`);
  const neighbour = shownBeside(node);
  // The timeline's reads wait for the answer: a read for the delete's own event then finds the message gone
  // from the page and from the contact's count alike (see `follow`).
  let answered;
  const held = new Promise((resolve) => (answered = resolve));
  const removal = serially(async () => {
    if (!(await held) || !state.messages.some((m) => m.id === message.id)) return; // a read took it away already
    state.messages = state.messages.filter((m) => m.id !== message.id);
    state.known -= 1; // the contact's count went down by it, here or elsewhere
    renderTimeline();
  });
  removal.catch(() => {}); // another contact opened meanwhile: there is nothing to take away
  let gone = false;
  let deleted = false;
  try {
    await call("DELETE", `/chats/${enc(message.id)}`);
    deleted = true;
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 404)) throw error;
    gone = deleted = true; // deleted elsewhere meanwhile (another tab, a tool, a forget)
  } finally {
    answered(deleted);
  }
  await removal;
  say(gone ? "That message was already deleted elsewhere." : "The message was deleted.");
  // the view stays where it was: the focus goes to the message that took the deleted one's place
  if (neighbour?.isConnected && !neighbour.hidden) neighbour.focus({ preventScroll: true });
  else $("timeline-title").focus();
}

export async function forget() {
  const contact = state.contact;
  const sure = await confirmed(
    `Forget ${contact.contact_id}?`,
    `Every message (${contact.message_count}), chat (${contact.chat_count}) and identifier of ${contact.contact_id} is erased for good.`,
    "Forget contact",
  );
  if (!sure) return;
  // The contact's own event stream announces the erasure, maybe before this answer is read: the refresh it
  // starts must not go home first (that would drop this answer as stale and say nothing of what was erased).
  state.forgetting = contact.contact_id;
  let result;
  try {
    result = await call("DELETE", `/contacts/${enc(contact.contact_id)}`);
  } finally {
    state.forgetting = null;
  }
  for (const hit of [...$("hits").children]) if (hit.dataset.contact === contact.contact_id) hit.remove();
  state.scope = null;
  await goHome();
  say(`Forgot ${result.contact_id}: ${result.deleted_messages} message(s), ${result.deleted_chats} chat(s), ${result.deleted_identifiers} identifier(s) erased.`);
}

export async function link(event) {
  event.preventDefault();
  const identifier = $("link-id").value.trim();
  if (!identifier) return;
  const contact = state.contact;
  const sure = await confirmed(
    "Link this identifier?",
    `${identifier} will name ${contact.contact_id}. If it names another contact now, that contact's messages and chats move into ${contact.contact_id}.`,
    "Link identifier",
  );
  if (!sure) return;
  const linked = await call("POST", `/contacts/${enc(contact.contact_id)}/aliases`, { body: { identifier } });
  $("link-id").value = "";
  state.contact = linked;
  renderContact();
  // the history it brought in shows in its place, wherever in the loaded range
  await Promise.all([loadChats(), serially(() => follow(linked.message_count, true))]);
  say(`${identifier} now names ${linked.contact_id} (${linked.merged_messages} message(s) and ${linked.merged_chats} chat(s) merged in).`);
}

export async function unlink(identifier) {
  const contact = state.contact;
  const sure = await confirmed(
    "Unlink this identifier?",
    `${identifier} stops naming ${contact.contact_id}; the history stays with ${contact.contact_id}, and the next message under ${identifier} starts a new contact.`,
    "Unlink identifier",
  );
  if (!sure) return;
  state.contact = await call("DELETE", `/contacts/${enc(contact.contact_id)}/aliases/${enc(identifier)}`);
  renderContact();
  say(`${identifier} no longer names ${contact.contact_id}.`);
  $("ids-title").focus();
}

export async function setStatus(chat, status) {
  const sure = await confirmed(
    "Set this chat's status?",
    `${capitalized(chatName(chat.id))} (${chat.id}) becomes ${status} (it is ${chat.status} now).`,
    "Set chat status",
  );
  if (!sure) return;
  await call("PATCH", `/contacts/${enc(state.contact.contact_id)}/chats/${enc(chat.id)}`, { body: { status } });
  await loadChats();
  say(`${capitalized(chatName(chat.id))} is ${status}.`);
  $("chats-title").focus();
}
