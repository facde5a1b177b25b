// A contact: its identifiers, chats and timeline, read back and followed as it changes. (The rules every module keeps:
// inspector.js.)

import { call, enc, Stale } from "./api.js";
import { renderChannelFilter, shown } from "./channels.js";
import { address, goHome } from "./contacts.js";
import { complain, say, show } from "./feedback.js";
import { listen, stopStream } from "./live.js";
import { $, FIND_PAGES, MOST, OVERLAP, PAGE, state } from "./state.js";
import { capitalized, chatName, el, seconds, visible, when, zone } from "./text.js";
import { remove, setStatus, unlink } from "./writes.js";

export async function open(contactId, messageId = null, { fromAddress = false } = {}) {
  say("");
  const move = ++state.moves;
  // read first: a contact that cannot be opened (unknown, another organization's) leaves the one shown live
  let contact;
  try {
    contact = await call("GET", `/contacts/${enc(contactId)}`);
  } catch (error) {
    if (move !== state.moves) return; // the page went elsewhere meanwhile: this one's failure is not its news
    throw error;
  }
  if (move !== state.moves) return; // the page was asked to go elsewhere meanwhile
  stopStream();
  state.generation += 1;
  address(contact.contact_id, messageId, fromAddress);
  state.contact = contact;
  state.scope = contact.contact_id;
  state.messages = [];
  state.cursor = null;
  state.timeline = Promise.resolve();
  state.known = contact.message_count;
  state.hiddenChannels = new Set();
  delete $("channel-filter").dataset.shown;
  seenNew();
  $("timeline").replaceChildren();
  renderContact();
  await Promise.all([loadChats(), serially(loadNewest)]);
  show("contact");
  listen(contact.contact_id);
  if (messageId) await reveal(messageId);
  else $("contact-title").focus();
}

export function renderContact() {
  const contact = state.contact;
  $("contact-title").textContent = contact.contact_id;
  $("contact-title").title = contact.contact_id; // a long one is cut after two lines
  const channels = contact.channels.length ? contact.channels.join(", ") : "no channel yet";
  $("contact-summary").replaceChildren(
    `${contact.message_count} message${contact.message_count === 1 ? "" : "s"}, ${contact.chat_count} chat${contact.chat_count === 1 ? "" : "s"}, on ${channels}; first seen `,
    when(contact.first_seen_at),
    ", last active ",
    when(contact.last_active_at),
    ".",
  );
  $("zone").textContent = `Oldest to newest; times in your time zone (${zone}).`;
  renderChannelFilter();
  const identifiers = JSON.stringify([contact.contact_id, ...contact.aliases]);
  if (identifiers === $("identifiers").dataset.shown) return; // unchanged: keep the elements (and the focus)
  $("identifiers").dataset.shown = identifiers;
  const own = el("li", {}, el("span", { class: "id" }, contact.contact_id), " (its contact_id)");
  const aliases = contact.aliases.map((alias, index) => {
    const label = `alias-${index}`;
    return el(
      "li",
      {},
      el("span", { class: "id", id: label }, alias),
      state.readOnly
        ? null
        : el("button", { type: "button", "aria-describedby": label, onclick: () => unlink(alias) }, "Unlink identifier"),
    );
  });
  $("identifiers").replaceChildren(own, ...aliases);
}

export async function loadChats() {
  const contact = state.contact;
  const listed = await call("GET", `/contacts/${enc(contact.contact_id)}/chats`, { query: { limit: MOST } });
  const all = Math.max(state.contact.chat_count, listed.chats.length);
  $("chats-note").textContent =
    all > listed.chats.length ? `Showing the newest ${listed.chats.length} of ${all} chats (the API lists no more).` : "";
  const shown = JSON.stringify(listed.chats);
  if (shown === $("chats").dataset.shown) return; // unchanged: keep the elements (and the focus)
  $("chats").dataset.shown = shown;
  $("chats").replaceChildren(...listed.chats.map(renderChat));
  $("no-chats").hidden = listed.chats.length > 0;
}

function renderChat(chat) {
  const channels = chat.channels.map((channel) => channel.name).join(", ") || "no channel";
  const label = `chat-${chat.id}`;
  const item = el(
    "li",
    {},
    el("p", { id: label, title: chat.id }, `${capitalized(chatName(chat.id))} on ${channels}`, chat.agent_id ? ` with ${chat.agent_id}` : "", ", opened ", when(chat.created_at), ": ", el("strong", { class: `status-${chat.status.toLowerCase()}` }, chat.status)),
  );
  if (!state.readOnly) {
    const select = el(
      "select",
      { id: `${label}-status` },
      ...["RUNNING", "COMPLETED", "FAILED", "CANCELED"].map((status) =>
        el("option", { value: status, selected: status === chat.status }, status),
      ),
    );
    item.append(
      el(
        "div",
        { class: "row" },
        el("label", { for: `${label}-status` }, `New status of ${chatName(chat.id)}`),
        select,
        el("button", { type: "button", "aria-describedby": label, onclick: () => setStatus(chat, select.value) }, "Set chat status"),
      ),
    );
  }
  return item;
}

function renderMessage(message) {
  const head = `m-${message.id}-head`;
  const timed = message.parts.some((part) => part.start_timestamp != null || part.end_timestamp != null);
  const parts =
    timed || message.parts.length > 1
      ? el(
          "ol",
          { class: "parts", "aria-label": "Parts" },
          ...message.parts.map((part) =>
            el(
              "li",
              { dir: "auto" },
              part.start_timestamp != null || part.end_timestamp != null
                ? el("span", { class: "at" }, `${part.start_timestamp != null ? seconds(part.start_timestamp) : "?"}–${part.end_timestamp != null ? seconds(part.end_timestamp) : "?"} `)
                : null,
              ...visible(part.text),
            ),
          ),
        )
      : null;
  const body = parts ?? el("p", { class: "content", dir: "auto" }, ...visible(message.content));
  const details = { id: message.id, chat_id: message.chat_id, agent_id: message.agent_id, metadata: message.metadata };
  return el(
    "li",
    { class: `message role-${message.role}`, id: `m-${message.id}`, "data-key": message.id, tabindex: "-1" },
    el(
      "p",
      { class: "head", id: head },
      el("span", { class: "role" }, message.role),
      ` · ${message.channel} · `,
      el(
        "a",
        { class: "permalink", href: `#contact=${enc(state.contact.contact_id)}&message=${enc(message.id)}`, title: "Link to this message (copies it)", onclick: (event) => pointAt(event, message.id) },
        when(message.created_at),
      ),
      message.chat_id ? ` · ${chatName(message.chat_id)}` : "",
      message.agent_id ? ` · ${message.agent_id}` : "",
    ),
    body,
    long(message.content) ? clipped(body) : null,
    attachments(message.metadata?.attachments),
    el("details", {}, el("summary", {}, "Metadata"), el("pre", {}, JSON.stringify(details, null, 2))),
    state.readOnly
      ? null
      : el("button", { type: "button", class: "danger", "aria-describedby": head, onclick: () => remove(message) }, "Delete message"),
  );
}

const LONG = 1500; // characters (or 25 lines) past which a message shows its start, with a button for the rest

function long(content) {
  return content.length > LONG || content.split("\n").length > 25;
}

/** A long message shows its first lines (a 32,000-character message was the height of 80 screens on a phone):
 * the button shows the rest, and hides it again. */
function clipped(body) {
  body.classList.add("clipped");
  const button = el("button", { type: "button", class: "whole", "aria-expanded": "false" }, "Show the whole message");
  button.addEventListener("click", () => {
    const shut = body.classList.toggle("clipped");
    button.setAttribute("aria-expanded", String(!shut));
    button.textContent = shut ? "Show the whole message" : "Show less of the message";
  });
  return button;
}

/** A message's attachments (metadata.attachments: the application's own objects, docs/reference.md), named in
 * a line under its text: a media message reads as what it carries, not only its caption. */
function attachments(listed) {
  if (!Array.isArray(listed) || !listed.length) return null;
  const named = listed.map((item) => {
    if (item === null || typeof item !== "object") return String(JSON.stringify(item));
    const name = item.filename ?? item.name ?? item.title;
    return [item.type ?? "file", item.mime_type ? ` (${item.mime_type})` : "", name ? ` ${name}` : "", item.caption ? ` “${item.caption}”` : ""].join("");
  });
  return el("p", { class: "attachments", dir: "auto" }, ...visible(`${listed.length} attachment${listed.length === 1 ? "" : "s"}: ${named.join("; ")}`));
}

/** Show `state.messages` in the timeline, keeping the elements already there (and so the focus). */
export function renderTimeline() {
  const list = $("timeline");
  const wanted = new Set(state.messages.map((message) => message.id));
  const existing = new Map();
  for (const child of [...list.children]) {
    if (wanted.has(child.dataset.key)) existing.set(child.dataset.key, child);
    else child.remove();
  }
  let next = list.firstElementChild;
  for (const message of state.messages) {
    const node = existing.get(message.id) ?? renderMessage(message);
    node.hidden = !shown(message);
    if (node === next) {
      next = next.nextElementSibling;
      continue;
    }
    list.insertBefore(node, next);
  }
  const showing = state.messages.some(shown);
  $("older").hidden = !state.cursor;
  $("no-messages").hidden = showing;
  $("no-messages").textContent = state.messages.length ? "No loaded message is on the channels shown." : "No messages.";
  $("newest").hidden = !showing;
}

async function page(limit, cursor) {
  return call("GET", "/chats", { query: { contact_id: state.contact.contact_id, limit, cursor } });
}

/** Run `task` once the open contact's timeline reads before it are done. A read replaces or extends
 * `state.messages` and `state.cursor` together; two at once would join pages that do not meet (an older page
 * read with the cursor of a timeline since read again would land above it with a gap). A task queued for a
 * contact that is no longer open is dropped. */
export function serially(task) {
  const generation = state.generation;
  const run = state.timeline.then(() => {
    if (generation !== state.generation) throw new Stale();
    return task();
  });
  state.timeline = run.catch(() => {}); // the caller hears of a failure; the next task runs all the same
  return run;
}

async function loadNewest() {
  const newest = await page(PAGE, null);
  state.messages = [...newest.messages].reverse();
  state.cursor = newest.next_cursor;
  renderTimeline();
}

/** The page before the oldest loaded message, above it; `state.cursor` is read when the task runs. */
export async function loadOlder(limit = PAGE) {
  if (!state.cursor) return;
  const older = await page(limit, state.cursor);
  const known = new Set(state.messages.map((message) => message.id));
  state.messages = [...older.messages.filter((message) => !known.has(message.id)).reverse(), ...state.messages];
  state.cursor = older.next_cursor;
  renderTimeline();
}

/** Read the timeline again from the newest message back, in pages that meet one another, to the oldest loaded
 * message (`whole`) or only until the pages meet the loaded messages. Above the deepest loaded message the
 * read met, the timeline becomes what the server holds now: what arrived (how many messages however), a late
 * message, history linked in, a delete, each in its place. `hint`: how many more messages the contact has
 * than the page knows of, so that one read usually takes them all. Says whether the read `covered` the whole
 * loaded range, and how many messages the contact has as far as the read can tell (`count`). */
async function readBack(whole, hint) {
  const loaded = state.messages;
  const ids = new Set(loaded.map((message) => message.id));
  const oldest = loaded[0];
  const unseen = new Set(ids);
  const read = [];
  let cursor = null;
  for (;;) {
    const first = whole ? Math.max(PAGE, unseen.size + hint) : hint + OVERLAP;
    const then = whole ? Math.max(1, unseen.size) : MOST; // as many as are loaded and not read again yet
    const listed = await page(Math.min(MOST, read.length ? then : first), cursor);
    read.push(...listed.messages);
    for (const message of listed.messages) unseen.delete(message.id);
    cursor = listed.next_cursor;
    const last = listed.messages.at(-1);
    if (!cursor || !oldest || !last || !unseen.has(oldest.id)) break;
    if (!whole && unseen.size < ids.size) break; // it met the loaded messages
    if (Date.parse(last.created_at) < Date.parse(oldest.created_at)) break; // past it: it was deleted
  }
  const deepest = read.findLastIndex((message) => ids.has(message.id));
  const at = deepest < 0 ? 0 : loaded.findIndex((message) => message.id === read[deepest].id);
  // the read reaches the oldest loaded message (or beyond): it replaces the range, and its cursor goes on
  // below it; else it replaces the range above the deepest loaded message it met
  const covered = !cursor || at === 0;
  const above =
    deepest >= 0
      ? read.slice(0, deepest + 1)
      : read.filter((message) => !oldest || Date.parse(message.created_at) >= Date.parse(oldest.created_at));
  const kept = covered ? read : above;
  const now = new Set(kept.map((message) => message.id));
  const added = above.filter((message) => !ids.has(message.id)).length;
  const removed = loaded.slice(at).filter((message) => !now.has(message.id)).length;
  state.messages = [...loaded.slice(0, covered ? 0 : at), ...[...kept].reverse()];
  if (covered) state.cursor = cursor;
  renderTimeline();
  return { covered, count: cursor ? state.known + added - removed : read.length };
}

/** Follow a change of the open contact, whose message_count is now `count`. A long loaded range is not read
 * again whole on each change (a call writing a turn a second would read thousands of messages a second): only
 * the newest messages, down to where they meet the loaded ones. It is read whole when it is small (one
 * request), when asked (`whole`: a link made here, "Reload timeline") or after the event stream was down.
 * What the read cannot explain in the count changed further back: a note says so and offers the reload. */
export async function follow(count, whole = false) {
  const stale = state.stale;
  state.stale = false;
  const last = state.messages.at(-1)?.id; // what is new is what comes after it (a late-dated message is not)
  let read;
  try {
    read = await readBack(whole || stale || state.messages.length <= MOST, Math.max(0, count - state.known));
  } catch (error) {
    state.stale ||= stale;
    throw error;
  }
  if (read.covered) noteFurther(0);
  const at = last ? state.messages.findIndex((message) => message.id === last) : -1;
  const added = at >= 0 ? state.messages.slice(at + 1).filter(shown).length : 0; // a hidden channel's: not news
  if (added) noteNew(added);
  if (read.count === count) {
    state.known = count;
    return;
  }
  // The count was read before the timeline: a message written or deleted at the head meanwhile is in one and
  // not the other, and its own event reads again. Only a count that held still across the read tells.
  const again = await call("GET", `/contacts/${enc(state.contact.contact_id)}`).catch((error) => {
    if (error.status === 404) return null; // forgotten or merged away meanwhile: its event says so
    throw error;
  });
  if (again?.message_count !== count) {
    state.known = read.count;
    return;
  }
  state.known = count;
  // a covered range is as the server has it: the difference is older than it, where "Load older messages" reads
  if (!read.covered) noteFurther(state.further + Math.abs(count - read.count));
}

/** New messages arrived at the end of the timeline: when the newest is below the window, a notice at its foot says
 * how many (and the status line, which is announced) and takes the reader to them (they arrived unseen and
 * unsaid, a review found). */
function noteNew(added) {
  if (newestInSight()) return;
  state.unseen += added;
  const news = `${state.unseen} new message${state.unseen === 1 ? "" : "s"} below`;
  $("new-below").textContent = `${news}: show`;
  $("new-below").hidden = false;
  $("status").textContent = `${news}.`; // announced; a problem said stays (say() would take it away)
}

/** The notice of new messages gone (they were seen, or the contact left). */
export function seenNew() {
  state.unseen = 0;
  $("new-below").hidden = true;
}

/** The reader scrolled: the new messages are seen once the newest is in sight. */
export function scrolled() {
  if (state.unseen && newestInSight()) seenNew();
}

/** The newest loaded message's element that the timeline shows (null: none). */
function newestNode() {
  const newest = state.messages.findLast(shown);
  return newest ? $(`m-${newest.id}`) : null;
}

/** Whether the newest loaded message is in the window (or there is none). */
function newestInSight() {
  const newest = newestNode();
  return !newest || newest.getBoundingClientRect().top < window.innerHeight;
}

/** Take the reader to the newest loaded message ("Newest message", the notice of new ones). */
export function toNewest() {
  seenNew();
  const newest = newestNode();
  if (!newest) return;
  newest.scrollIntoView({ block: "end" });
  newest.focus({ preventScroll: true });
}

/** The note that messages changed further back than the reads of changes look, with a button that reads the
 * loaded range again: never a gap that nothing shows. Announced (role status); 0 takes it away. */
export function noteFurther(changes) {
  state.further = changes;
  $("further").textContent = changes
    ? `${changes} message${changes === 1 ? "" : "s"} changed further back in the timeline than live updates read (among the older messages loaded, or before them).`
    : "";
  $("reload").hidden = !changes;
}

/** Page back until the message is loaded, then focus it. */
async function reveal(messageId) {
  if (!state.messages.some((m) => m.id === messageId)) say("Looking back for the message…");
  for (let pages = 0; pages < FIND_PAGES && state.cursor && !state.messages.some((m) => m.id === messageId); pages++) {
    await serially(() => loadOlder(MOST));
  }
  const node = $(`m-${messageId}`);
  if (!node) {
    address(state.contact.contact_id, null, true); // the address names what is shown, not the message not found
    $("contact-title").focus();
    complain(
      `That message is not among this contact's newest ${(FIND_PAGES * MOST).toLocaleString("en")} messages, which the inspector reads back: it was deleted, or it is older than that (GET /chats pages further back).`,
    );
    return;
  }
  say("");
  mark(node);
  if (node.querySelector(".clipped")) node.querySelector("button.whole").click(); // the match may be in its rest
  node.focus();
  node.scrollIntoView({ block: "center" });
}

/** Show the message of `node` as the one the address names. */
function mark(node) {
  for (const found of document.querySelectorAll(".message.found")) found.classList.remove("found");
  node.classList.add("found");
}

/** A message's time is the link to it: a click (not one that opens a tab or a window) puts the link in the
 * address, in place, marks the message and copies the link; the timeline stays as it is (following the link
 * would read it again from the newest message). Support shares a message as a link (a review found no way to). */
async function pointAt(event, messageId) {
  if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  address(state.contact.contact_id, messageId, true);
  const node = $(`m-${messageId}`);
  if (node) mark(node);
  try {
    await navigator.clipboard.writeText(location.href);
    say("The link to this message is copied, and in the address bar.");
  } catch {
    say("The link to this message is in the address bar: copy it from there.");
  }
}

/** What changed since the last look: the contact, its chats, and the timeline (`follow`; `whole`: all of its
 * loaded range). */
export async function refresh(whole = false) {
  const before = state.contact;
  if (!before) return;
  let contact;
  try {
    contact = await call("GET", `/contacts/${enc(before.contact_id)}`);
  } catch (error) {
    if (error.status !== 404) throw error;
    if (state.forgetting === before.contact_id) return; // forget() goes home and says what was erased
    if (state.scope === before.contact_id) state.scope = null; // a search cannot be narrowed to it any more
    await goHome();
    complain(`${before.contact_id} is not a contact any more (forgotten, or merged away).`);
    return;
  }
  if (contact.contact_id !== before.contact_id) {
    await open(contact.contact_id); // its identifier was linked into another contact
    say(`${before.contact_id} was linked into ${contact.contact_id} elsewhere: this is that contact's timeline now.`);
    return;
  }
  state.contact = contact;
  renderContact();
  await loadChats();
  await serially(() => follow(contact.message_count, whole));
}

/** "Reload timeline": the loaded range read again whole, which the note of changes further back offers. */
export async function reload() {
  const before = state.messages.map((message) => message.id).join();
  const generation = state.generation;
  await refresh(true);
  if (generation !== state.generation) return; // it was forgotten or linked away: refresh said so
  $("timeline-title").focus();
  const same = state.messages.map((message) => message.id).join() === before;
  say(
    same
      ? "The timeline was read again: the loaded messages are unchanged, so the change is older than the oldest one loaded (Load older messages reads it)."
      : `The timeline was read again: ${state.messages.length} message(s), each change in its place.`,
  );
}

export async function download() {
  const contact = state.contact;
  const response = await call("GET", `/contacts/${enc(contact.contact_id)}/export`, { raw: true });
  const blob = await response.blob();
  const link = el("a", { href: URL.createObjectURL(blob), download: `chatdock-${contact.contact_id.replace(/[^A-Za-z0-9@._+-]/g, "_")}.jsonl` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  say(`Exported ${contact.contact_id} as JSON Lines.`);
}
