// The agent dashboard: sign in with an API key, find a customer, see the profile, its
// consents and cross-channel timeline, with live updates and screen pops over one stream.

import { ApiError, api, forgetKey, storeKey, storedKey } from "./api.js";
import {
  chooseLanguage, eventType, label, language, otherLanguage, setLanguage, t, translatePage,
} from "./i18n.js";
import {
  channelLabel, definitionList, formatMoney, formatTime, formatValue, h, isComplaint, maskedAware,
  section,
} from "./view.js";

const $ = (id) => document.getElementById(id);
const CHANNELS = ["web", "phone", "social", "store", "email"];
const PAGE = 20;
const TRAIT_ORDER = ["first_name", "last_name", "name", "email", "phone", "street", "postcode",
  "city", "country", "language", "birthday", "gender", "nationality", "company", "business_id"];
const COMPUTED_ORDER = ["purchase_count", "purchase_total", "average_order_value",
  "last_purchase_at", "rfm_segment", "rfm_score", "satisfaction", "csat", "nps",
  "calls", "preferred_channel", "preferred_store", "favourite_product_groups",
  "campaign_reactions", "first_seen", "last_seen"];
// shown in their own places (badge, complaints card, RFM score) rather than as rows
const COMPUTED_SHOWN_ELSEWHERE = new Set(["last_contact", "complaints", "open_complaints",
  "rfm_recency", "rfm_frequency", "rfm_monetary"]);
const MONEY = new Set(["purchase_total", "average_order_value"]);
const POP_TARGET_STORAGE = "muisti.dashboard.calls";

const state = {
  session: null,
  searchParam: null,
  profile: null,
  consents: null,
  timeline: [],
  timelineDone: false,
  channel: "",
  fresh: new Set(),
  callTarget: null,
  live: { source: null, generation: 0, failures: 0, status: "off" },
  refreshing: null,
  refreshAgain: false,
};

// --- messages -------------------------------------------------------------------------------

function announce(text) {
  const announcer = $("announcer");
  announcer.textContent = "";
  requestAnimationFrame(() => { announcer.textContent = text; });
}

function showError(contextKey, error) {
  if (error instanceof ApiError && error.status === 401 && state.session) {
    signOut(t("signin.refused"));
    return;
  }
  const detail = error instanceof ApiError
    ? (error.status === 0 ? t("error.network") : error.describe()) : String(error);
  const alerts = $("alerts");
  alerts.querySelector(`[data-context="${contextKey}"]`)?.remove();
  const message = h("div", { class: "alert", role: "alert", dataset: { context: contextKey } },
    h("span", {}, `${t(contextKey)}: ${detail}`),
    h("button", { type: "button", class: "quiet", onclick: (event) => {
      event.currentTarget.parentElement.remove();
      $("main").focus();
    } }, t("error.dismiss")));
  alerts.append(message);
}

function clearError(contextKey) {
  $("alerts").querySelector(`[data-context="${contextKey}"]`)?.remove();
}

// --- sign-in --------------------------------------------------------------------------------

async function signIn(key, { quiet = false } = {}) {
  try {
    state.session = await api.session(key);
  } catch (error) {
    forgetKey();
    if (!quiet) showError("signin.failed", error);
    showSignIn();
    return;
  }
  storeKey(key);
  clearError("signin.failed");
  $("api-key").value = "";
  $("sign-in-view").hidden = true;
  $("workspace").hidden = false;
  $("sign-out").hidden = false;
  renderWho();
  const stored = sessionStorage.getItem(POP_TARGET_STORAGE);
  state.callTarget = stored ? JSON.parse(stored) : null;
  renderCallTarget();
  $("search-value").focus();
  state.searchParam = await detectNameSearch();
  $("search-type").querySelector("option[value=name]").hidden = !state.searchParam;
  $("search-type").querySelector("option[value=name]").disabled = !state.searchParam;
  connectLive();
}

// name search exists only where the profile API offers it; a 404 means it does not
async function detectNameSearch() {
  for (const param of ["name", "q"]) {
    try {
      await api.search(param, "zzzzzzzzzz");
      return param;
    } catch (error) {
      if (!(error instanceof ApiError) || error.status === 404 || error.status === 0) return null;
    }
  }
  return null;
}

function signOut(reason) {
  forgetKey();
  closeLive();
  Object.assign(state, { session: null, profile: null, consents: null, timeline: [], callTarget: null });
  $("profile").hidden = true;
  $("profile").replaceChildren();
  $("results").replaceChildren();
  showSignIn();
  if (reason) showError("signin.failed", new ApiError(401, reason));
}

function showSignIn() {
  $("sign-in-view").hidden = false;
  $("workspace").hidden = true;
  $("sign-out").hidden = true;
  $("who").hidden = true;
  setLiveStatus("off", true);
  $("api-key").focus();
}

function renderWho() {
  if (!state.session) return;
  const { name, roles, unmasked } = state.session;
  $("who").textContent = `${name} · ${roles.join(", ")} · ${t(unmasked ? "view.unmasked" : "view.masked")}`;
  $("who").hidden = false;
}

// --- search ---------------------------------------------------------------------------------

async function search(event) {
  event.preventDefault();
  const type = $("search-type").value;
  const value = $("search-value").value.trim();
  if (!value) {
    $("search-value").focus();
    return;
  }
  $("results").replaceChildren();
  try {
    if (type === "name") {
      renderResults(await api.search(state.searchParam, value));
    } else {
      showProfile(await api.findProfile(type, value), { focus: true });
    }
    clearError("search.failed");
  } catch (error) {
    showError("search.failed", error);
  }
}

function renderResults(body) {
  const items = Array.isArray(body) ? body : body?.results || body?.profiles || body?.items || [];
  const list = h("ul", { class: "results" }, items.map((item) => {
    const id = item.profile_id || item.id;
    const traits = item.traits || {};
    const value = (name) => (traits[name]?.value ?? traits[name] ?? "");
    const name = item.name || [value("first_name"), value("last_name")].filter(Boolean).join(" ") || id;
    const extra = [item.email, item.phone, ...(item.identifiers?.email || []), ...(item.identifiers?.phone || [])]
      .filter(Boolean).join(", ");
    return h("li", {}, h("button", { type: "button", class: "link", onclick: () => openProfile(id, { focus: true }) },
      extra ? `${name} – ${extra}` : name));
  }));
  const found = items.length ? t("search.results", { count: items.length }) : t("search.none");
  $("results").replaceChildren(
    h("p", { role: "status" }, body?.truncated ? `${found} ${t("search.truncated")}` : found),
    list);
  list.querySelector("button")?.focus();
}

// --- the profile ----------------------------------------------------------------------------

async function openProfile(profileId, { focus = false, attempts = 1 } = {}) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      showProfile(await api.profile(profileId), { focus });
      return true;
    } catch (error) {
      if (error instanceof ApiError && error.status === 404 && attempt < attempts) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        continue;
      }
      showError("profile.failed", error);
      return false;
    }
  }
}

function showProfile(profile, { focus = false } = {}) {
  const switched = state.profile?.profile_id !== profile.profile_id;
  state.profile = profile;
  clearError("profile.failed");
  $("results").replaceChildren();
  if (switched) {
    state.timeline = [];
    state.timelineDone = false;
    state.fresh = new Set();
    state.consents = null;
    renderProfile();
    loadTimeline();
    loadConsents();
    connectLive();
  } else {
    renderProfile();
  }
  if (focus) $("profile-name").focus();
}

async function loadConsents() {
  const profileId = state.profile.profile_id;
  try {
    const consents = await api.consents(profileId);
    if (state.profile?.profile_id !== profileId) return;
    state.consents = consents;
  } catch (error) {
    state.consents = { available: false, detail: error instanceof ApiError ? error.describe() : String(error) };
  }
  renderConsents();
}

// reload after a change notice; several notices at once cause one reload at a time
async function refreshProfile() {
  if (!state.profile) return;
  if (state.refreshing) {
    state.refreshAgain = true;
    return;
  }
  const profileId = state.profile.profile_id;
  state.refreshing = (async () => {
    try {
      const profile = await api.profile(profileId);
      if (state.profile?.profile_id !== profileId) return;
      if (profile.profile_id !== profileId) {
        showProfile(profile);  // merged into another profile meanwhile
        return;
      }
      state.profile = profile;
      renderProfile({ keepTimeline: true });
      await refreshTimelineHead();
    } catch (error) {
      showError("profile.failed", error);
    }
  })();
  await state.refreshing;
  state.refreshing = null;
  if (state.refreshAgain) {
    state.refreshAgain = false;
    refreshProfile();
  }
}

function displayName(profile) {
  const traits = profile.traits || {};
  const name = [traits.first_name?.value, traits.last_name?.value].filter(Boolean).join(" ");
  return name || traits.name?.value || t("profile.unnamed");
}

function renderProfile({ keepTimeline = false } = {}) {
  const profile = state.profile;
  if (!profile) return;
  $("empty-state").hidden = true;
  const article = $("profile");
  const openComplaints = profile.computed?.open_complaints || 0;
  const timelineCard = keepTimeline && $("timeline-card") ? $("timeline-card") : timelineSection();
  const head = h("div", { class: "profile-head" },
    h("h2", { id: "profile-name", tabindex: "-1", "data-keep": "name" }, displayName(profile)),
    openComplaints > 0 ? h("span", { class: "badge complaint-badge" }, t("complaints.badge", { count: openComplaints })) : null,
    h("span", { class: "meta" }, `${t("profile.id")} ${profile.profile_id}`));
  const left = h("div", { class: "column", tabindex: "0", "aria-label": `${t("section.identifiers")}, ${t("section.traits")}, ${t("section.consents")}` },
    identifiersSection(profile), traitsSection(profile), h("div", { id: "consents-slot" }), segmentsSection(profile));
  const middle = h("div", { class: "column", tabindex: "0", "aria-label": t("section.computed") },
    complaintsSection(profile), computedSection(profile));
  const right = h("div", { class: "column timeline-column" }, timelineCard);
  // a live update must not move the agent's focus, scroll position or opened details
  const focusKey = document.activeElement?.closest?.("[data-keep]")?.dataset.keep;
  const opened = [...article.querySelectorAll("details[open]")].map((d) => d.dataset.keep);
  const scrolled = [...article.querySelectorAll(".column, #timeline")];
  const scrolls = scrolled.map((element) => element.scrollTop);
  article.replaceChildren(head, h("div", { class: "columns" }, left, middle, right));
  article.hidden = false;
  renderConsents();
  if (!keepTimeline) renderTimeline();
  if (profileKept(profile)) {
    for (const key of opened) article.querySelector(`details[data-keep="${CSS.escape(key)}"]`)?.setAttribute("open", "");
    article.querySelectorAll(".column, #timeline").forEach((element, index) => { element.scrollTop = scrolls[index] || 0; });
    const focused = focusKey && article.querySelector(`[data-keep="${CSS.escape(focusKey)}"]`);
    (focused?.matches("details") ? focused.querySelector("summary") : focused)?.focus();
  }
  state.renderedProfileId = profile.profile_id;
}

function profileKept(profile) {
  return state.renderedProfileId === profile.profile_id;
}

function identifiersSection(profile) {
  const rows = Object.entries(profile.identifiers || {})
    .filter(([, values]) => values.length)
    .map(([type, values]) => [label(type), h("span", {}, values.map((value, index) =>
      [index ? ", " : "", maskedAware(value)]))]);
  return section("identifiers", "section.identifiers", definitionList(rows));
}

function traitsSection(profile) {
  const traits = profile.traits || {};
  const names = Object.keys(traits).sort((a, b) => {
    const rank = (name) => (TRAIT_ORDER.includes(name) ? TRAIT_ORDER.indexOf(name) : TRAIT_ORDER.length);
    return rank(a) - rank(b) || a.localeCompare(b);
  });
  const rows = names.map((name) => {
    const trait = traits[name];
    const provenance = [channelLabel(trait.channel || "?"), trait.source, formatTime(trait.at),
      trait.rule && `${t("provenance.rule")}: ${label(trait.rule, trait.rule === "first_seen" ? "rule" : "")}`]
      .filter(Boolean).join(" · ");
    return h("tr", {},
      h("th", { scope: "row" }, label(name)),
      h("td", {}, h("details", { class: "provenance", "data-keep": `trait-${name}` },
        h("summary", { title: `${t("provenance")}: ${provenance}` }, maskedAware(trait.value)),
        h("p", {}, `${t("provenance")}: ${provenance}`))));
  });
  return section("traits", "section.traits", h("table", { class: "traits" }, h("tbody", {}, rows)));
}

function renderConsents() {
  const slot = $("consents-slot");
  if (!slot) return;
  const consents = state.consents;
  let content;
  if (!consents) {
    content = h("p", { class: "muted" }, "…");
  } else if (!consents.available) {
    content = h("p", { class: "warning" }, h("strong", {}, t("consents.unavailable")),
      consents.detail ? ` (${consents.detail})` : "");
  } else if (!consents.consents.length) {
    content = h("p", { class: "muted" }, t("consents.none"));
  } else {
    content = h("ul", { class: "consents" }, consents.consents.map((row) =>
      h("li", { class: row.allowed ? "allowed" : "not-allowed" },
        h("span", { class: "consent-mark", "aria-hidden": "true" }, row.allowed ? "✓" : "✕"),
        h("span", {}, row.titles?.[language()] ?? label(row.purpose)),
        h("span", { class: "muted" }, ` – ${row.state ? label(row.state) : ""}, ${t(row.allowed ? "consent.allowed" : "consent.notAllowed")}${row.at ? `, ${formatTime(row.at)}` : ""}`))));
  }
  slot.replaceChildren(section("consents", "section.consents", content));
}

function segmentsSection(profile) {
  if (!profile.segments?.length) return null;
  return section("segments", "section.segments",
    h("ul", { class: "chips" }, profile.segments.map((segment) => h("li", {}, segment))));
}

function complaintsSection(profile) {
  const complaints = profile.computed?.complaints || [];
  if (!complaints.length) return null;
  return section("complaints", "section.complaints", h("ul", { class: "complaints" },
    complaints.map((complaint) => h("li", { class: "complaint" },
      h("span", { class: "flag" }, t("complaint")), " ",
      h("time", { datetime: complaint.at }, formatTime(complaint.at)), " · ",
      channelLabel(complaint.channel || ""), complaint.text ? h("q", {}, complaint.text) : null))));
}

function computedSection(profile) {
  const computed = profile.computed || {};
  // leave out what says nothing yet: no value, an empty list, counters all at zero
  const known = (name) => {
    const value = computed[name];
    if (value === null || value === undefined) return false;
    if (Array.isArray(value)) return value.length > 0;
    if (typeof value === "object") return Object.values(value).some((v) => v !== 0 && v !== null);
    return true;
  };
  const names = [...COMPUTED_ORDER.filter(known),
    ...Object.keys(computed).filter((name) => known(name) && !COMPUTED_ORDER.includes(name) && !COMPUTED_SHOWN_ELSEWHERE.has(name)).sort()];
  const rows = names.map((name) => [label(name), computedValue(name, computed[name], computed)]);
  const contacts = Object.entries(computed.last_contact || {})
    .sort(([, a], [, b]) => String(b).localeCompare(String(a)))
    .map(([channel, at]) => [channelLabel(channel), formatTime(at)]);
  return section("computed", "section.computed", definitionList(rows),
    contacts.length ? h("h4", {}, label("last_contact")) : null,
    contacts.length ? definitionList(contacts) : null);
}

function computedValue(name, value, computed) {
  if (name === "satisfaction" && value && typeof value === "object") {
    const scale = value.scale ? ` / ${value.scale}` : "";
    return `${formatValue(value.score)}${scale} (${[value.survey, formatTime(value.at)].filter(Boolean).join(", ")})`;
  }
  if (name === "rfm_score" && value) {
    const parts = ["rfm_recency", "rfm_frequency", "rfm_monetary"];
    return h("span", { title: parts.map((part) => `${label(part)} ${computed[part] ?? "–"}`).join(", ") },
      `${value} (R${computed.rfm_recency ?? "–"} F${computed.rfm_frequency ?? "–"} M${computed.rfm_monetary ?? "–"})`);
  }
  if (MONEY.has(name) && typeof value === "number") return formatMoney(value);
  if (name === "preferred_channel" && typeof value === "string") return channelLabel(value);
  if (name === "rfm_segment" && typeof value === "string") return value.replaceAll("_", " ");
  return formatValue(value);
}

// --- the timeline ---------------------------------------------------------------------------

function timelineSection() {
  const filter = h("select", { id: "channel-filter", "data-keep": "channel", onchange: (event) => {
    state.channel = event.target.value;
    state.timeline = [];
    state.timelineDone = false;
    renderTimeline();
    loadTimeline();
  } },
  h("option", { value: "" }, t("timeline.all")),
  CHANNELS.map((channel) => h("option", { value: channel, selected: channel === state.channel }, channelLabel(channel))));
  return h("section", { id: "timeline-card", class: "card timeline-card", "aria-labelledby": "timeline-title" },
    h("div", { class: "timeline-head" },
      h("h3", { id: "timeline-title" }, t("section.timeline")),
      h("label", { for: "channel-filter" }, t("timeline.filter")), filter),
    h("ol", { id: "timeline", class: "timeline", tabindex: "0", "aria-labelledby": "timeline-title", "data-keep": "timeline" }),
    h("div", { class: "timeline-foot" },
      h("button", { type: "button", id: "load-more", "data-keep": "more", onclick: () => loadTimeline({ more: true }) }, t("timeline.more")),
      h("p", { id: "timeline-end", class: "muted", role: "status" })));
}

async function loadTimeline({ more = false } = {}) {
  const profileId = state.profile.profile_id;
  const channel = state.channel;
  const before = more && state.timeline.length ? state.timeline[state.timeline.length - 1].at : undefined;
  try {
    const page = await api.timeline(profileId, { channel, before, limit: PAGE });
    if (state.profile?.profile_id !== profileId || state.channel !== channel) return;
    const known = new Set(state.timeline.map((entry) => entry.message_id));
    state.timeline.push(...page.entries.filter((entry) => !known.has(entry.message_id)));
    state.timelineDone = page.entries.length < PAGE;
    clearError("timeline.failed");
    renderTimeline();
    if (more) document.querySelector(`#timeline li:nth-child(${known.size + 1})`)?.focus();
  } catch (error) {
    showError("timeline.failed", error);
  }
}

async function refreshTimelineHead() {
  const profileId = state.profile.profile_id;
  const page = await api.timeline(profileId, { channel: state.channel, limit: PAGE });
  if (state.profile?.profile_id !== profileId) return;
  const known = new Set(state.timeline.map((entry) => entry.message_id));
  const added = page.entries.filter((entry) => !known.has(entry.message_id));
  if (!added.length) return;
  for (const entry of added) state.fresh.add(entry.message_id);
  state.timeline = [...added, ...state.timeline].sort((a, b) => String(b.at).localeCompare(String(a.at)));
  renderTimeline();
  announce(added.map((entry) => t("live.newEvent", { type: eventType(entry.type) })).join(". "));
}

function renderTimeline() {
  const list = $("timeline");
  if (!list) return;
  const focusKey = list.contains(document.activeElement) && document.activeElement !== list
    ? document.activeElement.dataset.keep : null;
  list.replaceChildren(...state.timeline.map(timelineEntry));
  if (focusKey) list.querySelector(`[data-keep="${CSS.escape(focusKey)}"]`)?.focus();
  if (!state.timeline.length) list.append(h("li", { class: "muted" }, t("timeline.empty")));
  $("load-more").hidden = state.timelineDone || !state.timeline.length;
  $("timeline-end").textContent = state.timelineDone && state.timeline.length ? t("timeline.end") : "";
}

const SUMMARY_HIDDEN = new Set(["text", "complaint", "kind", "event"]);

function timelineEntry(entry) {
  const summary = entry.summary || {};
  const complaint = isComplaint(entry);
  const fresh = state.fresh.has(entry.message_id);
  const details = Object.entries(summary).filter(([name]) => !SUMMARY_HIDDEN.has(name))
    .map(([name, value]) => `${label(name)}: ${formatValue(value)}`).join(" · ");
  return h("li", { class: ["entry", `channel-${entry.channel}`, complaint && "complaint", fresh && "fresh"].filter(Boolean).join(" "), tabindex: "-1", "data-keep": `entry-${entry.message_id}` },
    h("div", { class: "entry-head" },
      h("time", { datetime: entry.at }, formatTime(entry.at)),
      h("span", { class: "channel" }, channelLabel(entry.channel)),
      h("strong", { class: "entry-type" }, eventType(entry.type)),
      complaint ? h("span", { class: "flag" }, t("complaint")) : null,
      fresh ? h("span", { class: "new" }, t("timeline.new")) : null),
    summary.text ? h("p", { class: "entry-text" }, summary.text) : null,
    details ? h("p", { class: "entry-details" }, details) : null);
}

// --- live updates and screen pops (one EventSource per tab) ----------------------------------

function setLiveStatus(status, hidden = false) {
  state.live.status = status;
  const element = $("live-status");
  element.hidden = hidden;
  element.dataset.status = status;
  element.textContent = t(`live.${status}`);
}

function closeLive() {
  state.live.generation += 1;
  state.live.source?.close();
  state.live.source = null;
}

async function connectLive() {
  closeLive();
  const generation = state.live.generation;
  const interest = { profile_id: state.profile?.profile_id, ...(state.callTarget || {}) };
  for (const name of Object.keys(interest)) if (!interest[name]) delete interest[name];
  if (!state.session || !Object.keys(interest).length) {
    setLiveStatus("off");
    return;
  }
  setLiveStatus("connecting");
  let grant;
  try {
    grant = await api.streamToken({ ...interest, tab_id: TAB_ID });
  } catch (error) {
    if (generation !== state.live.generation) return;
    showError("live.failed", error);
    retryLive(generation);
    return;
  }
  if (generation !== state.live.generation) return;
  const source = new EventSource(grant.stream_url);
  state.live.source = source;
  source.addEventListener("ready", () => {
    state.live.failures = 0;
    clearError("live.failed");
    setLiveStatus("on");
    refreshProfile();  // whatever happened while the stream was being opened
  });
  source.addEventListener("profile-changed", (event) => {
    const change = JSON.parse(event.data);
    if (change.kind === "merged_away" && change.merged_into) openProfile(change.merged_into);
    else refreshProfile();
  });
  source.addEventListener("resync", () => refreshProfile());
  source.addEventListener("screen-pop", (event) => screenPop(JSON.parse(event.data)));
  source.addEventListener("reconnect", () => connectLive());
  source.addEventListener("error", () => {
    // EventSource would retry with the same, soon expired, token: get a fresh one instead
    if (generation !== state.live.generation) return;
    source.close();
    retryLive(generation);
  });
}

// one id per page load: the server replaces this page's previous stream instead of holding it
// open until its next heartbeat finds the connection gone (getRandomValues, unlike
// randomUUID, works on plain http too)
const TAB_ID = Array.from(crypto.getRandomValues(new Uint8Array(12)),
  (byte) => byte.toString(16).padStart(2, "0")).join("");

function retryLive(generation) {
  setLiveStatus("connecting");
  state.live.failures += 1;
  const delay = Math.min(1000 * 2 ** (state.live.failures - 1), 30000);
  setTimeout(() => { if (generation === state.live.generation) connectLive(); }, delay);
}

// --- screen pop -----------------------------------------------------------------------------

function followCalls(event) {
  event.preventDefault();
  const target = { agent_id: $("pop-agent").value.trim(), extension: $("pop-extension").value.trim(), queue: $("pop-queue").value.trim() };
  for (const name of Object.keys(target)) if (!target[name]) delete target[name];
  if (!Object.keys(target).length) {
    $("pop-status").textContent = t("pop.needTarget");
    $("pop-agent").focus();
    return;
  }
  state.callTarget = target;
  sessionStorage.setItem(POP_TARGET_STORAGE, JSON.stringify(target));
  renderCallTarget();
  connectLive();
}

function stopFollowing() {
  state.callTarget = null;
  sessionStorage.removeItem(POP_TARGET_STORAGE);
  renderCallTarget();
  connectLive();
  $("pop-agent").focus();
}

function describeTarget(target) {
  return Object.entries(target).map(([name, value]) => `${t(`pop.${name === "agent_id" ? "agent" : name}`)} ${value}`).join(", ");
}

function renderCallTarget() {
  const target = state.callTarget;
  $("pop-agent").value = target?.agent_id || "";
  $("pop-extension").value = target?.extension || "";
  $("pop-queue").value = target?.queue || "";
  $("pop-stop").hidden = !target;
  $("pop-status").textContent = target ? t("pop.following", { target: describeTarget(target) }) : "";
}

async function screenPop(call) {
  const details = [call.queue && `${t("pop.queue")} ${call.queue}`, call.extension && `${t("pop.extension")} ${call.extension}`]
    .filter(Boolean).join(", ") || eventType(call.type);
  const message = t("pop.incoming", { details });
  $("pop-status").textContent = message;
  announce(message);
  if (state.profile?.profile_id === call.profile_id) return;
  // the call may reach this page before the profile projection created the caller's profile
  const waiting = setTimeout(() => { $("pop-status").textContent = t("pop.waiting"); }, 1500);
  const opened = await openProfile(call.profile_id, { focus: true, attempts: 15 });
  clearTimeout(waiting);
  if (opened) $("pop-status").textContent = message;
}

// --- start ----------------------------------------------------------------------------------

function applyLanguage() {
  translatePage();
  const switcher = $("lang-switch");
  switcher.textContent = t("lang.switch");
  switcher.lang = otherLanguage();
  switcher.setAttribute("aria-label", t("lang.switchLabel"));
  const type = $("search-type").value;
  $("search-value").placeholder = t(`hint.${type}`);
  setLiveStatus(state.live.status, !state.session);
  renderWho();
  renderCallTarget();
  if (state.profile) renderProfile();
}

function start() {
  chooseLanguage();
  applyLanguage();
  $("lang-switch").addEventListener("click", () => {
    setLanguage(otherLanguage());
    applyLanguage();
  });
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (key) signIn(key);
    else $("api-key").focus();
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("search-form").addEventListener("submit", search);
  $("search-type").addEventListener("change", () => {
    $("search-value").placeholder = t(`hint.${$("search-type").value}`);
  });
  $("pop-form").addEventListener("submit", followCalls);
  $("pop-stop").addEventListener("click", stopFollowing);
  const key = storedKey();
  if (key) signIn(key, { quiet: true });
  else showSignIn();
}

start();
