// The DOM, as text: stored text reaches the page through text nodes only (never innerHTML). (The rules every module
// keeps: inspector.js.)

import { guarded } from "./feedback.js";

export const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;

export const timeFormat = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  timeZoneName: "short",
});

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "onclick") node.addEventListener("click", guarded(value));
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined)); // strings become text nodes
  return node;
}

/** The snippet's [matched] words as <mark> elements, the rest as text: the marks' brackets dropped, and the
 * text's own brackets and backslashes, which the server escapes with a backslash (\[URGENT\]), unescaped. */
export function marked(snippet) {
  const pieces = [];
  let text = "";
  let open = false;
  for (let at = 0; at < snippet.length; at += 1) {
    const char = snippet[at];
    if (char === "\\" && at + 1 < snippet.length) {
      at += 1;
      text += snippet[at];
    } else if (char === "[" && !open) {
      pieces.push(...visible(text));
      text = "";
      open = true;
    } else if (char === "]" && open) {
      pieces.push(el("mark", {}, ...visible(text)));
      text = "";
      open = false;
    } else {
      text += char;
    }
  }
  pieces.push(...visible(open ? "[" + text : text)); // a mark left open (not made by the server) stays as sent
  return pieces;
}

export function when(timestamp) {
  return el("time", { datetime: timestamp }, timeFormat.format(new Date(timestamp)));
}

const shortFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
const yearFormat = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });

/** A time in a list, short: its day and minute this year, its day and year before (a contact of last year's
 * same day is told apart); the whole of it as its title. */
export function shortWhen(timestamp) {
  const at = new Date(timestamp);
  const format = at.getFullYear() === new Date().getFullYear() ? shortFormat : yearFormat;
  return el("time", { datetime: timestamp, title: timeFormat.format(at) }, format.format(at));
}

/** A time into a call as [h:]m:ss.s, rounded to the tenth before it is split (59.96 s is 1:00.0, not 0:60.0). */
export function seconds(value) {
  const tenths = Math.round(value * 10);
  const hours = Math.floor(tenths / 36000);
  const minutes = Math.floor((tenths % 36000) / 600);
  const rest = ((tenths % 600) / 10).toFixed(1).padStart(4, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${rest}` : `${minutes}:${rest}`;
}

/** How a chat is named: the end of its id. Chat ids are UUIDv7, whose first 8 hex digits are the time (every
 * chat opened within about a minute would read the same); the last 8 are random. */
export function chatName(id) {
  return `chat …${id.slice(-8)}`;
}

export function capitalized(text) {
  return text[0].toUpperCase() + text.slice(1);
}

// Characters that show as nothing, or turn the text around it: bidi controls (U+202E makes "gnp.exe" read
// "exe.png"), zero-width characters, the soft hyphen and the byte-order mark.
const INVISIBLE = /[\u00AD\u061C\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u2069\uFEFF]/g;

/** Stored text with each invisible character shown as its code point (⟨U+202E⟩, marked) instead of acting:
 * support sees that the text is not what it looks like. A zero-width joiner inside an emoji sequence (👩‍💻)
 * is left to join. */
export function visible(text) {
  const pieces = [];
  let from = 0;
  for (const found of text.matchAll(INVISIBLE)) {
    if (found[0] === "\u200D" && joinsEmoji(text, found.index)) continue;
    const code = found[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
    pieces.push(text.slice(from, found.index), el("span", { class: "invisible" }, `⟨U+${code}⟩`));
    from = found.index + 1;
  }
  pieces.push(text.slice(from));
  return pieces.filter((piece) => piece !== "");
}

function joinsEmoji(text, at) {
  const before = /\p{Extended_Pictographic}[\uFE0F\u{1F3FB}-\u{1F3FF}]?$/u;
  return before.test(text.slice(Math.max(0, at - 4), at)) && /^\p{Extended_Pictographic}/u.test(text.slice(at + 1, at + 3));
}

/** `visible` as a string, for a text that is one string (the delete confirmation quotes the message). */
export function visibleString(text) {
  return visible(text)
    .map((piece) => (typeof piece === "string" ? piece : piece.textContent))
    .join("");
}

/** Other spellings of an identifier support typed, as a customer wrote it, to try when it names no contact (a
 * review found "+31 6 1234 5678", "0031612345678" and an upper-case email found nothing): an email in lower
 * case; a phone number without spaces, dashes, dots, brackets and a "(0)", "00" read as "+", and with a "+" if it
 * has none. A national number (06-...) has no country to add: it is not guessed. */
export function spellings(typed) {
  const found = [];
  if (typed.includes("@")) found.push(typed.toLowerCase());
  else if (/^[+\d\s().-]+$/.test(typed) && /\d/.test(typed)) {
    let digits = typed.replace(/\(0\)/g, "").replace(/[\s().-]/g, "");
    if (digits.startsWith("00")) digits = `+${digits.slice(2)}`;
    found.push(digits);
    if (!digits.startsWith("+") && !digits.startsWith("0")) found.push(`+${digits}`);
  }
  return [...new Set(found)].filter((spelling) => spelling !== typed);
}
