// DOM helpers for every page's scripts: one way to build an element, find one, and show a toast.

export const $ = (id) => document.getElementById(id);

// h("button", {type: "button", class: "link", onclick: fn, dataset: {id: 3}}, "Reply"): attributes by their HTML
// names (`class`, `for`, `aria-*`), `on<event>` listeners, `dataset`, `true` for a boolean attribute, and a
// non-string value on a property of that name (`value: 3`, `checked: true`). Children are nodes or text (never
// HTML: text is always escaped); null, undefined and false are left out.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) { el.setAttribute(k, ""); if (k in el) el[k] = true; }  // also the default (form.reset)
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// A toast in the room page's #cr-toasts (top left, never over the chat input); kind "info" or "bad".
export function notify(text, kind = "info", ms = 5000) {
  const box = $("cr-toasts");
  if (!box) return;
  const el = h("div", { class: `cr-toast ${kind}`, role: "status" }, text);
  box.append(el);
  setTimeout(() => el.remove(), ms);
}
