from services.cli.lag import TopicRow, lag_by_topic, overview_rows

ENDS = {("a", 0): 10, ("a", 1): 5, ("b", 0): 7}
STARTS = {("a", 0): 0, ("a", 1): 0, ("b", 0): 2}


def test_lag_is_log_end_minus_committed_offset_summed_over_partitions():
    assert lag_by_topic(ENDS, STARTS, {("a", 0): 8, ("a", 1): 5}) == {"a": 2}


def test_a_partition_without_a_commit_counts_from_the_log_start():
    assert lag_by_topic(ENDS, STARTS, {("a", 0): 10}) == {"a": 5}


def test_records_deleted_by_retention_are_not_counted_as_lag():
    assert lag_by_topic(ENDS, STARTS, {("b", 0): 0}) == {"b": 5}


def test_topics_a_group_never_committed_on_are_not_its_lag():
    assert "b" not in lag_by_topic(ENDS, STARTS, {("a", 0): 0})


def test_overview_lists_each_reading_group_and_topics_nobody_reads():
    rows = overview_rows({"a": 2, "b": 1}, ENDS, STARTS,
                         {"g2": {("a", 0): 10, ("a", 1): 5}, "g1": {("a", 0): 0}})
    assert rows == [TopicRow("a", 2, 15, "g1", 15), TopicRow("a", 2, 15, "g2", 0),
                    TopicRow("b", 1, 5)]
