"""Operator commands of the export service (``python -m services.export <command>``).

``migrate-hetus [--dry-run]``: the read model's hetus stored in the clear before hetu
protection, rewritten (services.export.hetu_migration).

``rewrap-secrets``: a master-key rotation's step for partner secrets. Run it with the new key
as ``CDP_MASTER_KEY`` and the old one as ``CDP_MASTER_KEY_PREVIOUS`` (the settings the
services run with during the rotation); it re-seals every stored partner secret under the new
key, prints a JSON report and exits 1 when a secret opens under neither key (left as it is).
Idempotent: a second run re-seals nothing.
"""

from __future__ import annotations

import argparse
import json
import sys

from services.common import hetu_migration, store
from services.common.config import Settings
from services.common.shredding import InvalidMasterKey
from services.export.export_store import ExportStore
from services.export.hetu_migration import RULES as HETU_RULES
from services.export.sealing import SecretBox


def rewrap_secrets(settings: Settings, argv: list[str]) -> int:
    argparse.ArgumentParser(
        prog="python -m services.export rewrap-secrets",
        description="Re-seal every partner secret under CDP_MASTER_KEY, opening those still "
                    "under CDP_MASTER_KEY_PREVIOUS.").parse_args(argv)
    try:
        secrets = SecretBox.from_settings(settings)
    except InvalidMasterKey as exc:
        print(f"cannot rewrap: {exc}", file=sys.stderr)
        return 2
    client = store.connect(settings)
    try:
        report = ExportStore(store.database(client, settings), secrets).rewrap_partner_secrets()
    finally:
        client.close()
    print(json.dumps(report, indent=2))
    return 1 if report["unreadable"] else 0


COMMANDS = {"rewrap-secrets": rewrap_secrets,
            "migrate-hetus": hetu_migration.command("export", HETU_RULES)}
