// The timeline's channel filter: which of the open contact's channels its timeline shows (a view only: every
// message stays loaded, and live updates go on; what is hidden is said; opening a contact, or a link to one of
// its messages, shows every channel). (The rules every module keeps: inspector.js.)

import { renderTimeline } from "./contact.js";
import { $, state } from "./state.js";
import { el } from "./text.js";

/** Whether the timeline shows `message` (its channel is not hidden). */
export function shown(message) {
  return !state.hiddenChannels.has(message.channel);
}

/** A box per channel of the open contact, when it has two or more; the choices made stay while it is open. */
export function renderChannelFilter() {
  const channels = state.contact.channels;
  const box = $("channel-filter");
  box.hidden = channels.length < 2;
  const listed = JSON.stringify(channels);
  if (listed === box.dataset.shown) return; // unchanged: keep the elements (and the focus)
  box.dataset.shown = listed;
  $("channel-boxes").replaceChildren(
    ...channels.map((channel, index) => {
      const id = `channel-${index}`;
      const input = el("input", { type: "checkbox", id, checked: !state.hiddenChannels.has(channel) });
      input.addEventListener("change", () => choose(channel, input.checked));
      return el("span", { class: "scope" }, input, el("label", { for: id }, channel));
    }),
  );
}

function choose(channel, wanted) {
  if (wanted) state.hiddenChannels.delete(channel);
  else state.hiddenChannels.add(channel);
  renderTimeline();
  $("status").textContent = filtered(); // said, and a problem on the page stays (say() would take it away)
}

/** What the timeline shows of what is loaded, said when a channel is hidden or shown again. */
export function filtered() {
  const count = state.messages.filter(shown).length;
  if (!state.hiddenChannels.size) return `Showing every channel: ${state.messages.length} loaded message(s).`;
  const hidden = [...state.hiddenChannels].join(", ");
  return `Showing ${count} of ${state.messages.length} loaded message(s); hidden: ${hidden}.`;
}
