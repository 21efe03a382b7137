"""Senders of one-time codes, chosen by ``CDP_PREFERENCES_SENDER``: email over SMTP
(smtplib), text messages through an SMS gateway's HTTP API (requests), or an outbox directory
(one JSON file per code) for local runs and tests, where nothing is ever really sent."""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import requests

from services.common.config import ConfigError, Settings

SUBJECTS = {"fi": "Kirjautumiskoodisi", "sv": "Din inloggningskod", "en": "Your sign-in code"}
BODIES = {
    "fi": "Koodisi on {code}. Se on voimassa {minutes} minuuttia. Jos et pyytänyt koodia, "
          "voit jättää tämän viestin huomiotta.",
    "sv": "Din kod är {code}. Den gäller i {minutes} minuter. Om du inte bad om en kod kan du "
          "strunta i det här meddelandet.",
    "en": "Your code is {code}. It is valid for {minutes} minutes. If you did not ask for a "
          "code, you can ignore this message.",
}


class SendFailed(Exception):
    """The code could not be handed to the carrier."""


@dataclass(frozen=True)
class CodeMessage:
    to_type: str  # "email" | "phone"
    to: str
    code: str
    language: str
    minutes: int

    @property
    def subject(self) -> str:
        return SUBJECTS.get(self.language, SUBJECTS["en"])

    @property
    def text(self) -> str:
        return BODIES.get(self.language, BODIES["en"]).format(code=self.code,
                                                              minutes=self.minutes)


class Sender:
    def send(self, message: CodeMessage) -> None:
        """Hand the message over; raises SendFailed."""
        raise NotImplementedError


class OutboxSender(Sender):
    """Writes each message to ``directory`` as JSON (written whole, then renamed, so a reader
    never sees half a file)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def send(self, message: CodeMessage) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{message.to_type}-{uuid.uuid4().hex}.json"
        partial = self.directory / f".{name}.tmp"
        body = {"to_type": message.to_type, "to": message.to, "subject": message.subject,
                "text": message.text, "code": message.code}
        partial.write_text(json.dumps(body, ensure_ascii=False, indent=2))
        os.replace(partial, self.directory / name)


class SmtpSender(Sender):
    TIMEOUT_SECONDS = 10.0

    def __init__(self, host: str, port: int, sender: str, *, user: str = "",
                 password: str = "", starttls: bool = True):
        self.host, self.port, self.sender = host, port, sender
        self.user, self.password, self.starttls = user, password, starttls

    def send(self, message: CodeMessage) -> None:
        email = EmailMessage()
        email["From"], email["To"], email["Subject"] = self.sender, message.to, message.subject
        email.set_content(message.text)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.TIMEOUT_SECONDS) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.user:
                    smtp.login(self.user, self.password)
                smtp.send_message(email)
        except (smtplib.SMTPException, OSError) as exc:
            raise SendFailed(f"SMTP: {exc.__class__.__name__}") from None


class SmsGatewaySender(Sender):
    """POSTs ``{"to", "message"}`` as JSON with a bearer token (the shape most gateways take;
    an adapter in front of a gateway with another shape is a few lines)."""

    TIMEOUT_SECONDS = 10.0

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def send(self, message: CodeMessage) -> None:
        try:
            response = requests.post(self.url, json={"to": message.to, "message": message.text},
                                     headers={"Authorization": f"Bearer {self.token}"},
                                     timeout=self.TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise SendFailed(f"SMS gateway unreachable: {exc.__class__.__name__}") from None
        if response.status_code >= 300:
            raise SendFailed(f"SMS gateway answered {response.status_code}")


class ByType(Sender):
    """Email to one sender, phone numbers to another; a type without a sender is dropped."""

    def __init__(self, senders: dict[str, Sender]):
        self.senders = senders

    def send(self, message: CodeMessage) -> None:
        sender = self.senders.get(message.to_type)
        if sender is not None:
            sender.send(message)


def build_sender(settings: Settings) -> Sender:
    """The sender ``CDP_PREFERENCES_SENDER`` names; ConfigError when its settings are missing."""
    choice = settings.preferences_sender
    if choice == "outbox":
        return OutboxSender(settings.preferences_outbox_dir)
    senders: dict[str, Sender] = {}
    problems = []
    if "smtp" in choice:
        if not settings.preferences_smtp_host or not settings.preferences_smtp_from:
            problems.append("CDP_PREFERENCES_SMTP_HOST and CDP_PREFERENCES_SMTP_FROM are "
                            "needed to send codes by email")
        senders["email"] = SmtpSender(
            settings.preferences_smtp_host, settings.preferences_smtp_port,
            settings.preferences_smtp_from, user=settings.preferences_smtp_user,
            password=settings.preferences_smtp_password,
            starttls=settings.preferences_smtp_starttls)
    if "sms" in choice:
        if not settings.preferences_sms_url:
            problems.append("CDP_PREFERENCES_SMS_URL is needed to send codes by text message")
        senders["phone"] = SmsGatewaySender(settings.preferences_sms_url,
                                            settings.preferences_sms_token)
    if problems:
        raise ConfigError(problems)
    return ByType(senders)
