"""Kafka entry point of the profile service: its consumer loops."""

from pymongo.database import Database

from services.common.bus import ConsumerLoop, Producer
from services.common.config import Settings


def build_consumers(settings: Settings, producer: Producer, db: Database) -> list[ConsumerLoop]:
    return []
