"""Counting the commands a store client sends, for tests that hold a path to a number of
round trips."""

from __future__ import annotations

from pymongo import monitoring


class CommandCounter(monitoring.CommandListener):
    """Counts the commands a client sends (give it as the client's event listener)."""

    def __init__(self):
        self.commands = 0

    def started(self, event):
        self.commands += 1

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass
