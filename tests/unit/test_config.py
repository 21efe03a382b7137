import pytest

from services.common.config import ConfigError, Settings, reference


def test_defaults_need_no_environment():
    settings = Settings.from_env({})
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.topic_partitions == 4


def test_values_are_read_from_cdp_variables_and_typed():
    settings = Settings.from_env({"CDP_TOPIC_PARTITIONS": "12", "CDP_AUTH_CACHE_SECONDS": "0.5",
                                  "CDP_MONGO_URI": "mongodb://db:27017/"})
    assert settings.topic_partitions == 12
    assert settings.auth_cache_seconds == 0.5
    assert settings.mongo_uri == "mongodb://db:27017/"


def test_every_invalid_variable_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"CDP_TOPIC_PARTITIONS": "many", "CDP_LOG_LEVEL": "LOUD",
                           "CDP_MONGO_URI": "postgres://x", "CDP_HTTP_PORT": "70000"})
    problems = " ".join(error.value.problems)
    for variable in ("CDP_TOPIC_PARTITIONS", "CDP_LOG_LEVEL", "CDP_MONGO_URI", "CDP_HTTP_PORT"):
        assert variable in problems
    assert len(error.value.problems) == 4


def test_zero_partitions_is_refused():
    with pytest.raises(ConfigError, match="CDP_TOPIC_PARTITIONS: must be a positive integer"):
        Settings.from_env({"CDP_TOPIC_PARTITIONS": "0"})


def test_bootstrap_keys_must_be_role_and_long_key_pairs():
    with pytest.raises(ConfigError, match="CDP_BOOTSTRAP_API_KEYS"):
        Settings.from_env({"CDP_BOOTSTRAP_API_KEYS": "admin:short"})
    ok = Settings.from_env({"CDP_BOOTSTRAP_API_KEYS": "admin:0123456789abcdef01"})
    assert ok.bootstrap_api_keys.startswith("admin:")


def test_reference_documents_every_setting():
    text = reference()
    for variable in ("CDP_KAFKA_BOOTSTRAP", "CDP_MONGO_URI", "CDP_DEAD_LETTER_STREAK_LIMIT"):
        assert f"`{variable}`" in text


def test_configuration_doc_is_generated_from_the_code():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "CONFIGURATION.md").read_text()
    assert reference() in doc, "docs/CONFIGURATION.md is stale: python -m services.common.config"


def test_identity_limits_are_type_number_pairs_of_known_types():
    from services.common.config import parse_type_limits

    settings = Settings.from_env({"CDP_IDENTITY_LIMITS": "email=3, phone=2"})
    assert parse_type_limits(settings.identity_limits) == {"email": 3, "phone": 2}
    with pytest.raises(ConfigError, match="unknown identifier types: shoe"):
        Settings.from_env({"CDP_IDENTITY_LIMITS": "shoe=1"})
    with pytest.raises(ConfigError, match="bad entry email=0"):
        Settings.from_env({"CDP_IDENTITY_LIMITS": "email=0"})


def test_match_thresholds_must_be_ordered_and_auto_merge_is_off_by_default():
    assert Settings.from_env({}).identity_auto_merge_threshold == 0
    with pytest.raises(ConfigError, match="must not exceed CDP_IDENTITY_MATCH_THRESHOLD"):
        Settings.from_env({"CDP_IDENTITY_POSSIBLE_THRESHOLD": "0.995"})
    with pytest.raises(ConfigError, match="0 \\(off\\) or at least"):
        Settings.from_env({"CDP_IDENTITY_AUTO_MERGE_THRESHOLD": "0.9"})
    with pytest.raises(ConfigError, match="above 0 and at most 1"):
        Settings.from_env({"CDP_IDENTITY_MATCH_THRESHOLD": "1.5"})
    assert Settings.from_env({"CDP_IDENTITY_AUTO_MERGE_THRESHOLD": "0.999"}
                             ).identity_auto_merge_threshold == 0.999
