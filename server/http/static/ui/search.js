// Search: the organization's messages, or the last contact's. (The rules every module keeps: inspector.js.)

import { call } from "./api.js";
import { open } from "./contact.js";
import { show } from "./feedback.js";
import { stopStream } from "./live.js";
import { $, state } from "./state.js";
import { el, marked, when } from "./text.js";

export async function search(more = false) {
  let query = state.search;
  if (!more) {
    const q = $("search-q").value.trim();
    if (!q) return;
    const contact = $("search-scope").checked ? state.scope : null;
    query = { q, contact_id: contact, cursor: null };
  }
  let page;
  try {
    page = await call("GET", "/chats/search", {
      query: { q: query.q, contact_id: query.contact_id, limit: 20, cursor: query.cursor },
    });
  } catch (error) {
    if (!more) $("results").hidden = true; // the results of the search before are not this one's
    throw error;
  }
  state.search = { ...query, cursor: page.next_cursor };
  if (!more) {
    stopStream();
    state.contact = null;
    state.generation += 1;
    show("home");
    $("hits").replaceChildren();
  }
  $("hits").append(...page.hits.map(renderHit));
  const shown = $("hits").children.length;
  const where = query.contact_id ? ` in ${query.contact_id}'s messages` : " in the organization";
  $("results-summary").textContent = `${shown} message${shown === 1 ? "" : "s"} found for “${query.q}”${where}${page.next_cursor ? " (more below)" : ""}.`;
  $("results").hidden = false;
  $("more-hits").hidden = !page.next_cursor;
  if (!more) $("results-title").focus();
}

function renderHit(hit) {
  return el(
    "li",
    { "data-contact": hit.contact_id },
    el(
      "button",
      { type: "button", class: "hit", onclick: () => open(hit.contact_id, hit.id) },
      el("span", { class: "meta" }, `${hit.contact_id} · ${hit.channel} · ${hit.role} · `, when(hit.created_at)),
      el("span", { class: "snippet", dir: "auto" }, ...marked(hit.snippet)),
    ),
  );
}
