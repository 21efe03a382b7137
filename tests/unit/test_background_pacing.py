"""Background deletes take turns with the store's other users (services.common.store.paced)."""

import time

from services.common.store import paced


def test_each_chunk_is_followed_by_a_pause_as_long_as_the_chunk_took():
    pauses = []
    chunks = []
    for chunk in paced(list(range(5)), 2, lambda took: pauses.append(took) or False):
        chunks.append(chunk)
        time.sleep(0.01 * len(chunks))
    assert chunks == [[0, 1], [2, 3], [4]]
    assert len(pauses) == 3
    assert all(took >= 0.01 * n for n, took in enumerate(pauses, start=1))


def test_a_pause_answering_true_stops_before_the_next_chunk():
    chunks = list(paced(list(range(5)), 2, lambda took: True))
    assert chunks == [[0, 1]]


def test_without_a_pause_every_chunk_comes_at_once():
    assert list(paced(list(range(3)), 2, None)) == [[0, 1], [2]]
