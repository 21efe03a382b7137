from services.identity.suggestions import person_record, suggestion_id


def test_segment_traits_become_matching_fields():
    record = person_record(
        {"firstName": "Johanna", "lastName": "Virtanen", "birthday": "1985-03-12T00:00:00Z",
         "address": {"street": "Mannerheimintie 12", "postalCode": "00100", "city": "Helsinki"}},
        {"email": "johanna@example.com", "phone": "+358401234567"})
    assert record == {"given_name": "Johanna", "family_name": "Virtanen",
                      "birth_date": "1985-03-12", "street": "Mannerheimintie 12",
                      "postcode": "00100", "city": "Helsinki", "phone": "+358401234567",
                      "email": "johanna@example.com"}


def test_a_full_name_is_split_when_first_and_last_are_missing():
    assert person_record({"name": "Matti Meikäläinen"}, {}) == {
        "given_name": "Matti", "family_name": "Meikäläinen"}


def test_traits_of_the_wrong_type_are_ignored():
    assert person_record({"firstName": 42, "address": "not a mapping"}, {}) == {}


def test_suggestion_id_does_not_depend_on_pair_order():
    assert suggestion_id("p_a", "p_b") == suggestion_id("p_b", "p_a")


def test_a_long_call_id_still_gives_a_valid_stable_message_id():
    from services.identity.channels import from_call

    call = {"call_id": "c" * 140, "event": "ended", "caller_number": "0401234567"}
    first, again = from_call(dict(call)), from_call(dict(call))
    assert len(first.envelope.message_id) <= 128
    assert first.envelope.message_id == again.envelope.message_id
