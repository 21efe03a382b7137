"""Kafka entry point of the consent service: its consumer loops and the daily retention
sweep beside them."""

from pymongo.database import Database

from services.common.bus import Producer
from services.common.config import Settings
from services.consent.consent_store import ConsentStore
from services.consent.consents_worker import LedgerHolding, consents_consumers
from services.consent.privacy_handlers import privacy_consumers
from services.consent.privacy_retention import RetentionSweep


def build_consumers(settings: Settings, producer: Producer, db: Database) -> list:
    return [*consents_consumers(settings, producer, db),
            *privacy_consumers(settings, producer, db,
                               holdings=[LedgerHolding(ConsentStore(db))]),
            RetentionSweep(db, settings)]
