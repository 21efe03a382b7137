"""The preference centre's words in Finnish, Swedish and English, and the choice of language:
the ``lang`` cookie set by the switch, else the browser's Accept-Language, else Finnish."""

from __future__ import annotations

LANGUAGES = ("fi", "sv", "en")
LANGUAGE_NAMES = {"fi": "Suomeksi", "sv": "På svenska", "en": "In English"}

TEXTS: dict[str, dict[str, str]] = {
    "fi": {
        "title": "Tietosi ja valintasi",
        "skip": "Siirry sisältöön",
        "language": "Kieli",
        "signin.heading": "Kirjaudu sisään",
        "signin.intro": "Näet, mitä tietoja meillä on sinusta, ja päätät itse, mihin niitä "
                        "käytetään. Kirjaudu sähköpostiosoitteella tai puhelinnumerolla: "
                        "lähetämme sinulle kertakäyttöisen koodin.",
        "signin.identifier": "Sähköpostiosoite tai puhelinnumero",
        "signin.send": "Lähetä koodi",
        "code.heading": "Syötä koodi",
        "code.sent": "Jos osoite tai numero on meillä tiedossa, lähetimme siihen koodin. Se "
                     "on voimassa {minutes} minuuttia.",
        "code.label": "Kertakäyttöinen koodi",
        "code.submit": "Kirjaudu",
        "code.refused": "Koodi ei kelpaa. Tarkista koodi tai pyydä uusi.",
        "code.restart": "Pyydä uusi koodi",
        "limited": "Liian monta yritystä. Yritä myöhemmin uudelleen.",
        "invalid": "Tarkista sähköpostiosoite tai puhelinnumero.",
        "signout": "Kirjaudu ulos",
        "held.heading": "Mitä tiedämme sinusta",
        "held.identifiers": "Tunnisteesi",
        "held.traits": "Tietosi",
        "held.segments": "Asiakasryhmät, joihin kuulut",
        "held.no_segments": "Et kuulu mihinkään asiakasryhmään.",
        "held.timeline": "Viimeisimmät tapahtumat",
        "held.no_timeline": "Ei tapahtumia.",
        "held.partners": "Kumppanit, joille tietojasi on luovutettu",
        "held.no_partners": "Tietojasi ei ole luovutettu kumppaneille.",
        "held.partner_sent": "ensimmäisen kerran {first}, viimeksi {last}",
        "held.partner_told_to_delete": "pyydetty poistamaan {at}",
        "held.partners_unavailable": "Luovutustietoja ei juuri nyt saatu; ne ovat myös "
                                     "täydessä tietopaketissa (lataa alta).",
        "held.none": "Meillä ei ole sinusta profiilitietoja.",
        "held.unavailable": "Profiilitietoja ei juuri nyt saatu. Yritä hetken kuluttua.",
        "export.heading": "Lataa kaikki tietosi",
        "export.text": "Kokoamme kaikkien järjestelmiemme tiedot sinusta yhteen tiedostoon "
                       "(JSON) – samat tiedot, jotka tietosuojavastaava saisi pyynnöstäsi.",
        "export.request": "Kokoa tietoni",
        "export.waiting": "Tietojasi kootaan. Päivitä sivu hetken kuluttua.",
        "export.download": "Lataa tiedosto",
        "purposes.heading": "Mihin tietojasi käytetään",
        "purposes.used_for": "Mihin",
        "purposes.gets": "Mitä saat",
        "purposes.on": "Sallittu",
        "purposes.off": "Ei sallittu",
        "purposes.turn_on": "Salli",
        "purposes.turn_off": "Kiellä",
        "purposes.saved": "Valintasi on tallennettu. Kuittaus: {receipt}",
        "object.heading": "Suoramarkkinointi",
        "object.text": "Yhdellä painalluksella kiellät kaiken suoramarkkinoinnin kaikissa "
                       "kanavissa.",
        "object.button": "Kiellä kaikki suoramarkkinointi",
        "object.done": "Olet kieltänyt kaiken suoramarkkinoinnin.",
        "rectify.heading": "Korjaa tieto",
        "rectify.field": "Korjattava tieto",
        "rectify.value": "Oikea arvo",
        "rectify.button": "Pyydä korjausta",
        "rectify.done": "Korjauspyyntö on vastaanotettu (tunnus {request}).",
        "erase.heading": "Poista tietoni",
        "erase.text": "Poistamme kaikki tietosi kaikista järjestelmistämme: profiilin, "
                      "tapahtumat ja tunnisteet. Pidämme vain sen, mitä laki vaatii (esim. "
                      "kirjanpito), ja merkinnän siitä, että pyysit poistoa, jotta tietojasi "
                      "ei kerätä uudelleen. Poistoa ei voi perua.",
        "erase.button": "Pyydä poistoa",
        "erase.confirm_heading": "Vahvista poisto",
        "erase.confirm_text": "Lähetimme uuden koodin. Syötä se vahvistaaksesi, että haluat "
                              "poistaa kaikki tietosi.",
        "erase.confirm": "Vahvista poisto",
        "erase.status": "Poistopyyntö {request}: {state}",
        "state.received": "vastaanotettu",
        "state.fanned_out": "käsittelyssä",
        "state.completed": "valmis",
        "state.overdue": "myöhässä",
        "state.partially_failed": "epäonnistui",
        "error.forbidden": "Lomake vanheni. Lataa sivu uudelleen ja yritä uudestaan.",
        "error.unavailable": "Palvelu ei juuri nyt vastaa. Yritä hetken kuluttua.",
    },
    "sv": {
        "title": "Dina uppgifter och val",
        "skip": "Hoppa till innehållet",
        "language": "Språk",
        "signin.heading": "Logga in",
        "signin.intro": "Se vilka uppgifter vi har om dig och bestäm själv vad de används "
                        "till. Logga in med e-postadress eller telefonnummer: vi skickar en "
                        "engångskod.",
        "signin.identifier": "E-postadress eller telefonnummer",
        "signin.send": "Skicka kod",
        "code.heading": "Ange koden",
        "code.sent": "Om vi känner till adressen eller numret har vi skickat en kod dit. Den "
                     "gäller i {minutes} minuter.",
        "code.label": "Engångskod",
        "code.submit": "Logga in",
        "code.refused": "Koden gäller inte. Kontrollera koden eller be om en ny.",
        "code.restart": "Be om en ny kod",
        "limited": "För många försök. Försök igen senare.",
        "invalid": "Kontrollera e-postadressen eller telefonnumret.",
        "signout": "Logga ut",
        "held.heading": "Vad vi vet om dig",
        "held.identifiers": "Dina identifierare",
        "held.traits": "Dina uppgifter",
        "held.segments": "Kundgrupper du hör till",
        "held.no_segments": "Du hör inte till någon kundgrupp.",
        "held.timeline": "Senaste händelser",
        "held.no_timeline": "Inga händelser.",
        "held.partners": "Partner som fått dina uppgifter",
        "held.no_partners": "Dina uppgifter har inte lämnats ut till partner.",
        "held.partner_sent": "första gången {first}, senast {last}",
        "held.partner_told_to_delete": "ombedd att radera dem {at}",
        "held.partners_unavailable": "Utlämnandena kunde inte hämtas just nu; de finns också "
                                     "i det fullständiga datapaketet (ladda ner nedan).",
        "held.none": "Vi har inga profiluppgifter om dig.",
        "held.unavailable": "Profiluppgifterna kunde inte hämtas just nu. Försök snart igen.",
        "export.heading": "Ladda ner alla dina uppgifter",
        "export.text": "Vi samlar uppgifterna om dig från alla våra system i en fil (JSON) – "
                       "samma uppgifter som dataskyddsombudet skulle få på din begäran.",
        "export.request": "Samla mina uppgifter",
        "export.waiting": "Dina uppgifter samlas. Uppdatera sidan om en stund.",
        "export.download": "Ladda ner filen",
        "purposes.heading": "Vad dina uppgifter används till",
        "purposes.used_for": "Till vad",
        "purposes.gets": "Vad du får",
        "purposes.on": "Tillåtet",
        "purposes.off": "Inte tillåtet",
        "purposes.turn_on": "Tillåt",
        "purposes.turn_off": "Förbjud",
        "purposes.saved": "Ditt val är sparat. Kvitto: {receipt}",
        "object.heading": "Direktmarknadsföring",
        "object.text": "Med ett klick förbjuder du all direktmarknadsföring i alla kanaler.",
        "object.button": "Förbjud all direktmarknadsföring",
        "object.done": "Du har förbjudit all direktmarknadsföring.",
        "rectify.heading": "Rätta en uppgift",
        "rectify.field": "Uppgift som ska rättas",
        "rectify.value": "Rätt värde",
        "rectify.button": "Begär rättelse",
        "rectify.done": "Begäran om rättelse har tagits emot (nummer {request}).",
        "erase.heading": "Radera mina uppgifter",
        "erase.text": "Vi raderar alla dina uppgifter i alla våra system: profilen, "
                      "händelserna och identifierarna. Vi behåller bara det lagen kräver (t.ex. "
                      "bokföring) och en anteckning om att du bett om radering, så att dina "
                      "uppgifter inte samlas in på nytt. Raderingen kan inte ångras.",
        "erase.button": "Begär radering",
        "erase.confirm_heading": "Bekräfta radering",
        "erase.confirm_text": "Vi skickade en ny kod. Ange den för att bekräfta att du vill "
                              "radera alla dina uppgifter.",
        "erase.confirm": "Bekräfta radering",
        "erase.status": "Begäran om radering {request}: {state}",
        "state.received": "mottagen",
        "state.fanned_out": "pågår",
        "state.completed": "klar",
        "state.overdue": "försenad",
        "state.partially_failed": "misslyckades",
        "error.forbidden": "Formuläret har gått ut. Ladda om sidan och försök igen.",
        "error.unavailable": "Tjänsten svarar inte just nu. Försök snart igen.",
    },
    "en": {
        "title": "Your data and choices",
        "skip": "Skip to content",
        "language": "Language",
        "signin.heading": "Sign in",
        "signin.intro": "See what we hold about you and decide what it is used for. Sign in "
                        "with your email address or phone number: we send you a one-time code.",
        "signin.identifier": "Email address or phone number",
        "signin.send": "Send code",
        "code.heading": "Enter your code",
        "code.sent": "If we know this address or number, we have sent a code to it. It is "
                     "valid for {minutes} minutes.",
        "code.label": "One-time code",
        "code.submit": "Sign in",
        "code.refused": "That code does not work. Check it or ask for a new one.",
        "code.restart": "Ask for a new code",
        "limited": "Too many attempts. Please try again later.",
        "invalid": "Please check the email address or phone number.",
        "signout": "Sign out",
        "held.heading": "What we hold about you",
        "held.identifiers": "Your identifiers",
        "held.traits": "Your details",
        "held.segments": "Customer groups you are in",
        "held.no_segments": "You are in no customer group.",
        "held.timeline": "Recent activity",
        "held.no_timeline": "No activity.",
        "held.partners": "Partners your data went to",
        "held.no_partners": "Your data has not been given to any partner.",
        "held.partner_sent": "first {first}, last {last}",
        "held.partner_told_to_delete": "asked to delete it {at}",
        "held.partners_unavailable": "Disclosures could not be fetched just now; the full "
                                     "download (below) lists them too.",
        "held.none": "We hold no profile about you.",
        "held.unavailable": "Your profile could not be fetched just now. Try again shortly.",
        "export.heading": "Download all your data",
        "export.text": "We collect what every one of our systems holds about you into one "
                       "file (JSON) – the same our data protection officer would get for you.",
        "export.request": "Collect my data",
        "export.waiting": "Your data is being collected. Reload the page in a moment.",
        "export.download": "Download the file",
        "purposes.heading": "What your data is used for",
        "purposes.used_for": "What for",
        "purposes.gets": "What you get",
        "purposes.on": "Allowed",
        "purposes.off": "Not allowed",
        "purposes.turn_on": "Allow",
        "purposes.turn_off": "Refuse",
        "purposes.saved": "Your choice is saved. Receipt: {receipt}",
        "object.heading": "Direct marketing",
        "object.text": "One click refuses all direct marketing on every channel.",
        "object.button": "Object to all direct marketing",
        "object.done": "You have objected to all direct marketing.",
        "rectify.heading": "Correct a detail",
        "rectify.field": "Detail to correct",
        "rectify.value": "Correct value",
        "rectify.button": "Ask for a correction",
        "rectify.done": "Your correction request is received (reference {request}).",
        "erase.heading": "Erase my data",
        "erase.text": "We erase everything we hold about you in all our systems: your "
                      "profile, activity and identifiers. We keep only what the law requires "
                      "(such as bookkeeping) and a note that you asked to be erased, so that "
                      "your data is not collected again. Erasure cannot be undone.",
        "erase.button": "Ask to be erased",
        "erase.confirm_heading": "Confirm erasure",
        "erase.confirm_text": "We sent you a new code. Enter it to confirm that you want all "
                              "your data erased.",
        "erase.confirm": "Confirm erasure",
        "erase.status": "Erasure request {request}: {state}",
        "state.received": "received",
        "state.fanned_out": "in progress",
        "state.completed": "completed",
        "state.overdue": "overdue",
        "state.partially_failed": "failed",
        "error.forbidden": "This form has expired. Reload the page and try again.",
        "error.unavailable": "The service is not answering just now. Try again shortly.",
    },
}


def choose_language(cookie: str | None, accept_language: str | None) -> str:
    """The switch's choice, else the best of the browser's languages we have, else Finnish."""
    if cookie in LANGUAGES:
        return cookie
    best, best_quality = "fi", -1.0
    for position, item in enumerate((accept_language or "").split(",")):
        tag, _, params = item.strip().partition(";")
        language = tag.strip().lower()[:2]
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        quality -= position * 1e-6  # earlier wins among equals
        if language in LANGUAGES and quality > best_quality and quality > 0:
            best, best_quality = language, quality
    return best


def translator(language: str):
    words = TEXTS[language]

    def translate(key: str, **values) -> str:
        return words[key].format(**values) if values else words[key]

    return translate
