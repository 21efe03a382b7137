"""How long the export worker's sweep keeps settled stream changes (when it runs:
test_background_loops.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.common import retention
from services.common.config import Settings
from services.export import housekeeping


@pytest.mark.parametrize(("setting", "days"), [
    (None, 30),  # the default names the kind
    ("stream_changes=7", 7),
    ("consent_proof=1825", 30),  # a setting from before the kind existed does not keep them
])
def test_settled_stream_changes_are_kept_for_their_retention_or_thirty_days(setting, days):
    settings = Settings.from_env({} if setting is None else {"CDP_RETENTION_DAYS": setting})
    sweep = housekeeping.SettledChangesSweep(
        store=None, policy=retention.parse_policy(settings.retention_days))
    assert sweep.keep_for == timedelta(days=days)
