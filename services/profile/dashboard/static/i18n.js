// UI strings in English and Finnish. The language comes from the browser unless the agent
// switched it (remembered in localStorage: a preference, not a secret).

const STRINGS = {
  en: {
    "app.title": "Muisti – agent dashboard",
    "skip": "Skip to content",
    "lang.switch": "Suomeksi",
    "lang.switchLabel": "Vaihda kieli suomeksi",
    "signin.heading": "Sign in",
    "signin.key": "API key",
    "signin.hint": "The key stays in this browser tab only (sessionStorage) and is sent as a header with each request; closing the tab forgets it.",
    "signin.submit": "Sign in",
    "signin.failed": "Sign-in failed",
    "signin.refused": "The key was refused; sign in again.",
    "signout": "Sign out",
    "view.masked": "masked view",
    "view.unmasked": "unmasked view",
    "search.legend": "Find a customer",
    "search.type": "Search by",
    "search.value": "Search term",
    "search.submit": "Search",
    "search.failed": "Search failed",
    "search.results": "Customers found: {count}",
    "search.none": "No customers found.",
    "search.truncated": "More match: type more of the name.",
    "type.phone": "Phone number",
    "type.email": "Email",
    "type.user_id": "Customer number",
    "type.hetu": "Personal identity code",
    "type.name": "Name (beginning)",
    "hint.phone": "any form, e.g. 040 123 4567",
    "hint.email": "e.g. aino@example.fi",
    "hint.user_id": "e.g. L-123456",
    "hint.hetu": "e.g. 131052-308T",
    "hint.name": "e.g. Aino Kor",
    "pop.legend": "Incoming calls",
    "pop.agent": "Agent id",
    "pop.extension": "Extension",
    "pop.queue": "Queue",
    "pop.follow": "Follow",
    "pop.stop": "Stop",
    "pop.needTarget": "Give an agent id, extension or queue.",
    "pop.following": "Opening the caller's profile for calls to: {target}",
    "pop.incoming": "Incoming call ({details}): opening the caller's profile.",
    "pop.waiting": "Incoming call: the caller's profile is still being created…",
    "live.off": "Live updates off",
    "live.connecting": "Connecting live updates…",
    "live.on": "Live updates on",
    "live.failed": "Live updates failed",
    "live.newEvent": "New on the timeline: {type}",
    "empty": "Search for a customer by phone number, email, customer number or name.",
    "profile.unnamed": "Unnamed customer",
    "profile.id": "Profile",
    "profile.failed": "Loading the profile failed",
    "profile.updated": "Profile updated",
    "section.identifiers": "Identifiers",
    "section.traits": "Details",
    "section.computed": "Customer value and contacts",
    "section.consents": "Consents",
    "section.segments": "Segments",
    "section.complaints": "Open complaints",
    "section.timeline": "Timeline",
    "consents.unavailable": "Consents unavailable",
    "consents.none": "No consents recorded.",
    "consent.allowed": "allowed",
    "consent.notAllowed": "not allowed",
    "complaints.badge": "Open complaints: {count}",
    "complaint": "Complaint",
    "masked": "masked",
    "timeline.filter": "Channel",
    "timeline.all": "All channels",
    "timeline.more": "Load more",
    "timeline.empty": "No events.",
    "timeline.end": "No older events.",
    "timeline.failed": "Loading the timeline failed",
    "timeline.new": "new",
    "provenance": "Source",
    "provenance.rule": "rule",
    "error.dismiss": "Dismiss",
    "error.network": "the service did not answer",
    "yes": "yes",
    "no": "no",
  },
  fi: {
    "app.title": "Muisti – asiakaspalvelun näkymä",
    "skip": "Siirry sisältöön",
    "lang.switch": "In English",
    "lang.switchLabel": "Switch the language to English",
    "signin.heading": "Kirjaudu sisään",
    "signin.key": "API-avain",
    "signin.hint": "Avain säilyy vain tässä selaimen välilehdessä (sessionStorage) ja lähtee jokaisen pyynnön mukana otsakkeena; välilehden sulkeminen unohtaa sen.",
    "signin.submit": "Kirjaudu",
    "signin.failed": "Kirjautuminen epäonnistui",
    "signin.refused": "Avain hylättiin; kirjaudu uudelleen.",
    "signout": "Kirjaudu ulos",
    "view.masked": "peitetty näkymä",
    "view.unmasked": "peittämätön näkymä",
    "search.legend": "Etsi asiakas",
    "search.type": "Hakuperuste",
    "search.value": "Hakuehto",
    "search.submit": "Hae",
    "search.failed": "Haku epäonnistui",
    "search.results": "Löytyneet asiakkaat: {count}",
    "search.none": "Asiakkaita ei löytynyt.",
    "search.truncated": "Osumia on enemmän: kirjoita nimeä pidemmälle.",
    "type.phone": "Puhelinnumero",
    "type.email": "Sähköposti",
    "type.user_id": "Asiakasnumero",
    "type.hetu": "Henkilötunnus",
    "type.name": "Nimi (alku)",
    "hint.phone": "missä muodossa tahansa, esim. 040 123 4567",
    "hint.email": "esim. aino@example.fi",
    "hint.user_id": "esim. L-123456",
    "hint.hetu": "esim. 131052-308T",
    "hint.name": "esim. Aino Kor",
    "pop.legend": "Saapuvat puhelut",
    "pop.agent": "Agentin tunnus",
    "pop.extension": "Alanumero",
    "pop.queue": "Jono",
    "pop.follow": "Seuraa",
    "pop.stop": "Lopeta",
    "pop.needTarget": "Anna agentin tunnus, alanumero tai jono.",
    "pop.following": "Soittajan profiili avataan puheluille: {target}",
    "pop.incoming": "Saapuva puhelu ({details}): avataan soittajan profiili.",
    "pop.waiting": "Saapuva puhelu: soittajan profiilia luodaan vielä…",
    "live.off": "Reaaliaikapäivitys pois",
    "live.connecting": "Yhdistetään reaaliaikapäivitystä…",
    "live.on": "Reaaliaikapäivitys päällä",
    "live.failed": "Reaaliaikapäivitys epäonnistui",
    "live.newEvent": "Uutta aikajanalla: {type}",
    "empty": "Hae asiakasta puhelinnumerolla, sähköpostilla, asiakasnumerolla tai nimellä.",
    "profile.unnamed": "Nimetön asiakas",
    "profile.id": "Profiili",
    "profile.failed": "Profiilin lataus epäonnistui",
    "profile.updated": "Profiili päivittyi",
    "section.identifiers": "Tunnisteet",
    "section.traits": "Tiedot",
    "section.computed": "Asiakkuus ja yhteydenotot",
    "section.consents": "Suostumukset",
    "section.segments": "Segmentit",
    "section.complaints": "Avoimet reklamaatiot",
    "section.timeline": "Aikajana",
    "consents.unavailable": "Suostumukset eivät ole saatavilla",
    "consents.none": "Ei kirjattuja suostumuksia.",
    "consent.allowed": "sallittu",
    "consent.notAllowed": "ei sallittu",
    "complaints.badge": "Avoimia reklamaatioita: {count}",
    "complaint": "Reklamaatio",
    "masked": "peitetty",
    "timeline.filter": "Kanava",
    "timeline.all": "Kaikki kanavat",
    "timeline.more": "Lataa lisää",
    "timeline.empty": "Ei tapahtumia.",
    "timeline.end": "Ei vanhempia tapahtumia.",
    "timeline.failed": "Aikajanan lataus epäonnistui",
    "timeline.new": "uusi",
    "provenance": "Lähde",
    "provenance.rule": "sääntö",
    "error.dismiss": "Sulje",
    "error.network": "palvelu ei vastannut",
    "yes": "kyllä",
    "no": "ei",
  },
};

// names of traits, computed traits, channels, consent states and survivorship rules
const LABELS = {
  en: {
    first_name: "First name", last_name: "Last name", name: "Name", email: "Email",
    phone: "Phone", street: "Street", city: "City", postcode: "Postcode", country: "Country",
    language: "Language", gender: "Gender", birthday: "Birthday", nationality: "Nationality",
    company: "Company", business_id: "Business id", household_size: "Household size",
    life_stage: "Life stage", housing: "Housing", interests: "Interests", title: "Title",
    user_id: "Customer number", anonymous_id: "Web cookie", device_id: "Device",
    twitter: "X (Twitter)", twitter_id: "X id", twitter_handle: "X handle", facebook_id: "Facebook id", hetu: "Personal identity code",
    purchase_count: "Purchases", purchase_total: "Total spent", average_order_value: "Average order",
    last_purchase_at: "Last purchase", calls: "Calls", first_seen: "First seen", last_seen: "Last seen",
    last_contact: "Last contact by channel", rfm_segment: "RFM segment", rfm_score: "RFM score",
    rfm_recency: "Recency score", rfm_frequency: "Frequency score", rfm_monetary: "Monetary score",
    open_complaints: "Open complaints", satisfaction: "Latest satisfaction answer",
    csat: "Satisfaction (CSAT)", nps: "Recommendation (NPS)",
    favourite_product_groups: "Favourite product groups", preferred_store: "Preferred store",
    preferred_channel: "Preferred channel", campaign_reactions: "Campaign reactions",
    web: "Web", phone_channel: "Phone", social: "Social media", store: "Store", email_channel: "Email", system: "System",
    granted: "granted", denied: "denied", withdrawn: "withdrawn", default: "default",
    most_recent: "most recent", first_seen_rule: "first seen", most_trusted: "most trusted source",
    order_id: "Order", total: "Total", currency: "Currency", url: "Address", sku: "Product",
    category: "Product group", queue: "Queue", disposition: "Outcome", talk_seconds: "Talk time (s)",
    agent_id: "Agent", platform: "Platform", label: "Tone", survey: "Survey", score: "Score",
    scale: "Scale", complaint_id: "Complaint",
  },
  fi: {
    first_name: "Etunimi", last_name: "Sukunimi", name: "Nimi", email: "Sähköposti",
    phone: "Puhelin", street: "Katuosoite", city: "Kaupunki", postcode: "Postinumero", country: "Maa",
    language: "Kieli", gender: "Sukupuoli", birthday: "Syntymäpäivä", nationality: "Kansalaisuus",
    company: "Yritys", business_id: "Y-tunnus", household_size: "Kotitalouden koko",
    life_stage: "Elämänvaihe", housing: "Asumismuoto", interests: "Kiinnostuksen kohteet", title: "Titteli",
    user_id: "Asiakasnumero", anonymous_id: "Verkkoeväste", device_id: "Laite",
    twitter: "X (Twitter)", twitter_id: "X-tunnus", twitter_handle: "X-käyttäjänimi", facebook_id: "Facebook-tunnus", hetu: "Henkilötunnus",
    purchase_count: "Ostot", purchase_total: "Ostot yhteensä", average_order_value: "Keskiostos",
    last_purchase_at: "Viimeisin osto", calls: "Puhelut", first_seen: "Ensimmäinen kontakti", last_seen: "Viimeisin kontakti",
    last_contact: "Viimeisin yhteys kanavittain", rfm_segment: "RFM-segmentti", rfm_score: "RFM-pisteet",
    rfm_recency: "Tuoreus", rfm_frequency: "Useus", rfm_monetary: "Rahallinen arvo",
    open_complaints: "Avoimet reklamaatiot", satisfaction: "Viimeisin tyytyväisyysvastaus",
    csat: "Tyytyväisyys (CSAT)", nps: "Suositteluhalukkuus (NPS)",
    favourite_product_groups: "Suosikkituoteryhmät", preferred_store: "Suosikkimyymälä",
    preferred_channel: "Suosikkikanava", campaign_reactions: "Kampanjareaktiot",
    web: "Verkko", phone_channel: "Puhelin", social: "Some", store: "Myymälä", email_channel: "Sähköposti", system: "Järjestelmä",
    granted: "annettu", denied: "kielletty", withdrawn: "peruttu", default: "oletus",
    most_recent: "uusin", first_seen_rule: "ensimmäinen", most_trusted: "luotetuin lähde",
    order_id: "Tilaus", total: "Summa", currency: "Valuutta", url: "Osoite", sku: "Tuote",
    category: "Tuoteryhmä", queue: "Jono", disposition: "Lopputulos", talk_seconds: "Puheaika (s)",
    agent_id: "Agentti", platform: "Palvelu", label: "Sävy", survey: "Kysely", score: "Pisteet",
    scale: "Asteikko", complaint_id: "Reklamaatio",
  },
};

// Finnish names of the event types Muisti itself emits and of common Segment events; a
// sender's own event names are shown as they came
const EVENT_TYPES_FI = {
  "Identify": "Tunnistautuminen", "Alias": "Tunnisteet yhdistetty", "Page Viewed": "Sivukäynti",
  "Screen Viewed": "Näkymäkäynti",
  "Product Viewed": "Tuotetta katsottu", "Product Clicked": "Tuotetta klikattu",
  "Product Added": "Tuote ostoskoriin", "Order Completed": "Tilaus",
  "Call Started": "Puhelu alkoi", "Call Answered": "Puheluun vastattiin", "Call Ended": "Puhelu päättyi",
  "Social Post Received": "Somejulkaisu", "Social Message Received": "Someviesti",
  "Survey Answered": "Kyselyvastaus", "Feedback Submitted": "Palaute",
  "Complaint Resolved": "Reklamaatio ratkaistu", "Complaint Closed": "Reklamaatio suljettu",
  "Email Sent": "Sähköposti lähetetty", "Email Delivered": "Sähköposti perillä",
  "Email Opened": "Sähköposti avattu", "Email Link Clicked": "Sähköpostin linkkiä klikattu",
  "Campaign Sent": "Kampanja lähetetty", "Campaign Converted": "Kampanja johti ostoon",
  "Consent Changed": "Suostumus muuttui", "Profiles Merged": "Profiilit yhdistetty",
  "Profile Split": "Profiili jaettu",
};

const STORAGE_KEY = "muisti.dashboard.lang";
let current = "en";

export function chooseLanguage() {
  const stored = localStorage.getItem(STORAGE_KEY);
  if (stored in STRINGS) return (current = stored);
  const preferred = (navigator.languages || [navigator.language || "en"])
    .map((tag) => tag.toLowerCase().slice(0, 2))
    .find((code) => code in STRINGS);
  return (current = preferred || "en");
}

export function setLanguage(code) {
  if (!(code in STRINGS)) return;
  current = code;
  localStorage.setItem(STORAGE_KEY, code);
}

export function language() {
  return current;
}

export function otherLanguage() {
  return current === "fi" ? "en" : "fi";
}

export function t(key, vars = {}) {
  const text = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}

// a human label for a field name; unknown names are shown with spaces for underscores
export function label(name, kind = "") {
  const key = kind && (name === "phone" || name === "email" || name === "first_seen")
    ? `${name}_${kind}` : name;
  return LABELS[current][key] ?? LABELS.en[key] ?? String(name).replaceAll("_", " ");
}

// an event type in the page's language
export function eventType(type) {
  return (current === "fi" && EVENT_TYPES_FI[type]) || type;
}

// translate every element that carries data-i18n (text) or data-i18n-* (attributes)
export function translatePage(root = document) {
  document.documentElement.lang = current;
  document.title = t("app.title");
  for (const element of root.querySelectorAll("[data-i18n]")) {
    element.textContent = t(element.dataset.i18n);
  }
  for (const element of root.querySelectorAll("[data-i18n-placeholder]")) {
    element.placeholder = t(element.dataset.i18nPlaceholder);
  }
  for (const element of root.querySelectorAll("[data-i18n-aria-label]")) {
    element.setAttribute("aria-label", t(element.dataset.i18nAriaLabel));
  }
}
