"""Kafka entry point of the consent service: its consumer loops."""

from pymongo.database import Database

from services.common.bus import ConsumerLoop, Producer
from services.common.config import Settings
from services.consent.consent_store import ConsentStore
from services.consent.consents_worker import LedgerHolding, consents_consumers
from services.consent.privacy_handlers import privacy_consumers


def build_consumers(settings: Settings, producer: Producer, db: Database) -> list[ConsumerLoop]:
    return [*consents_consumers(settings, producer, db),
            *privacy_consumers(settings, producer, db,
                               holdings=[LedgerHolding(ConsentStore(db))])]
