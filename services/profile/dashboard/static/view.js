// Rendering: every value goes into the page as text (textContent), never as HTML, because
// much of it was written by customers (tweets, survey answers) or arrives from outside.

import { label, language, t } from "./i18n.js";

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function formatTime(value) {
  if (!value) return "";
  const moment = new Date(value);
  if (Number.isNaN(moment.getTime())) return String(value);
  return new Intl.DateTimeFormat(language() === "fi" ? "fi-FI" : "en-GB", {
    dateStyle: "medium", timeStyle: "short",
  }).format(moment);
}

const NUMBER_FORMATS = { fi: "fi-FI", en: "en-GB" };

export function formatMoney(value) {
  return new Intl.NumberFormat(NUMBER_FORMATS[language()], { minimumFractionDigits: 2, maximumFractionDigits: 2 }).format(value);
}

export function formatValue(value) {
  if (value === null || value === undefined || value === "") return "–";
  if (typeof value === "boolean") return value ? t("yes") : t("no");
  if (typeof value === "number") return new Intl.NumberFormat(NUMBER_FORMATS[language()]).format(value);
  if (Array.isArray(value)) return value.map(formatValue).join(", ");
  if (typeof value === "object") {
    return Object.entries(value).map(([k, v]) => `${label(k)}: ${formatValue(v)}`).join(", ");
  }
  if (/^\d{4}-\d{2}-\d{2}T/.test(value)) return formatTime(value);
  return String(value);
}

const MASK = "*****";

export function isMasked(value) {
  return typeof value === "string" && value.includes(MASK);
}

// a value that hides part of itself says so to screen readers too
export function maskedAware(value) {
  const text = formatValue(value);
  if (!isMasked(value)) return h("span", {}, text);
  return h("span", { class: "masked" }, text, h("span", { class: "visually-hidden" }, ` (${t("masked")})`));
}

export function definitionList(rows) {
  return h("dl", { class: "pairs" }, rows.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
}

export function section(id, titleKey, ...content) {
  return h("section", { class: "card", "aria-labelledby": `${id}-title` },
    h("h3", { id: `${id}-title` }, t(titleKey)), ...content);
}

export function channelLabel(channel) {
  return label(channel, "channel");
}

export function isComplaint(entry) {
  const summary = entry.summary || {};
  return summary.complaint === true || summary.kind === "complaint" || /complaint/i.test(entry.type || "");
}
