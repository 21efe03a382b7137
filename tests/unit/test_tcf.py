"""The TCF v2 decoder against IAB Tech Lab's own test strings (iabtcf-java's TCStringV2Test,
iabtcf-es's reported-issues tests) and a round trip through a test encoder."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.consent import tcf

FULL = ("COrEAV4OrXx94ACABBENAHCIAD-AAAAAAACAAxAAAAgAIAwgAgAAAAEAgQAAAAAEAYQAQAAAACAAAABAAA"
        ".IBAgAAAgAIAwgAgAAAAEAAAACA.QAagAQAgAIAwgA.cAAAAAAAITg=")


def test_core_fields_of_iabs_example_string():
    decoded = tcf.decode("COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA")
    data = decoded.to_dict()
    assert data["created"] == "2020-01-26T17:01:00Z"
    assert data["last_updated"] == "2021-02-02T17:01:00Z"
    assert (data["cmp_id"], data["cmp_version"], data["consent_screen"]) == (675, 2, 1)
    assert (data["vendor_list_version"], data["tcf_policy_version"]) == (15, 2)
    assert (data["consent_language"], data["publisher_country_code"]) == ("EN", "AA")
    assert data["is_service_specific"] is False and data["use_non_standard_texts"] is False
    assert data["purpose_one_treatment"] is True
    assert data["special_feature_optins"] == [1]
    assert data["purpose_consents"] == [2, 10]
    assert data["purpose_legitimate_interests"] == [2, 9]


def test_bitfield_vendors_and_every_segment():
    data = tcf.decode(FULL).to_dict()
    assert data["purpose_consents"] == [3, 4, 5, 6, 7, 8, 9]
    assert data["vendor_consents"] == [23, 37, 47, 48, 53, 65, 98]
    assert data["vendor_legitimate_interests"] == [37, 47, 48, 53, 65, 98, 129]
    assert data["disclosed_vendors"] == [23, 37, 47, 48, 53, 65, 98, 129]
    assert data["allowed_vendors"] == [12, 23, 37, 47, 48, 53]
    assert data["publisher_tc"] == {"pub_purposes_consent": [1],
                                    "pub_purposes_li_transparency": [24],
                                    "custom_purposes_consent": [2],
                                    "custom_purposes_li_transparency": [1, 2]}


def test_range_encoded_vendors():
    assert tcf.decode("COv__-wOv__-wC2AAAENAPCgAAAAAAAAAAAAA_wAQA_gEBABAEAAAA"
                      ).vendor_legitimate_interests == [128]
    assert tcf.decode("COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAYFfAV-BVkAGBVYFWAAA"
                      ).vendor_consents == [702, 703]
    assert tcf.decode("COwBOpCOwBOpCLqAAAENAPCAAAAAAAAAAAAAFfwAQFfgUbABAUaAAA"
                      ).vendor_consents == [703]


def test_publisher_restrictions_with_a_vendor_listed_twice():
    decoded = tcf.decode(
        "CO4VGswO4VGswAfZCBDEAzCsAP_AAH_AAAigGUNf_X9fb2vj-_599_t0eY1f9_63t-wzjheMs-8NyZ-X_J4Wv2M"
        "yvB34JqQKGRgkunLBAQdtHGncTQgBwIlViTLMY02MjzNKJrJEilsbe2dYGH9vn8XT_ZKZ70-_v__7v3___33_5"
        "Ayhr_6_r7e18f3_Pvv9ujzGr_v_W9v2GccLxln3huTPy_5PC1-xmV4O_BNSBQyMEl05YICDto407iaEAOBEqsS"
        "ZZjGmxkeZpRNZIkUtjb2zrAw_t8_i6f7JTPen39___d-___--__ICgKAOAAcAA4AFAAjgB6AEYALcGACAW0Ato"
        "JAHAAOAAcACgARwA9ACMAFuFABALaAW0GgDgAHAAOABQAI4AegBGAC3DgAgFtALaEQBwADgAHAAoAEcAPQAjAB"
        "biQAQC2gFtCoA4ABwADgAUACOAHoARgAtxYAIBbQC2hkAcAA4ABwAKABHAD0AIwAW40AEAtoBbQ6AOAAcAA4AF"
        "AAjgB6AEYALceACAW0AtohAHAAOAAcACgARwA9ACMAFuRABALaAW0SgDgAHAAOABQAI4AegBGAC3JgAgFtALaK"
        "QBwADgAHAAoAEcAPQAjABblQAQC2gFtA")
    restriction = next(r for r in decoded.publisher_restrictions
                       if r.purpose_id == 1 and r.restriction_type == 1)
    assert restriction.vendor_ids == [7, 20, 71, 122, 140, 183]


@pytest.mark.parametrize("string, reason", [
    # iabtcf-es issue 142: the disclosed-vendors bitfield is shorter than its MaxVendorId
    ("CLSYjTaOngnCIAOABBENAXCMAGOAABBAAA7IA5n-m7fP6_3fbqVv6E__PoA5Aqff3aJx8tv_1967rfnQEQoAIAAQ"
     "CrwkAEABAcACABIMACAAuApEVABABUSABgBCAVSAtIoACACIArYQAHACgAFgAVwBJgDcAI7AWgMAAgBiKgAgB"
     "MgFfKQAQBRkQAQA4AFiBAAoA-AEVAJlAVgAtYcACAJcAr4eABAK8OgBgFzAOmAqwgABAWyA.IFukWSQh",
     "truncated"),
    ("COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAA", "truncated"),
    ("BOhwdphOxFC7tAHABBFRC--AAAAuhr_7__7-_9_-_f__9uj3Or_v_f__32ccL59v_h_7v-_7fi_20nV4u_1vft9yf"
     "k1-5ctDztp507iakivXmqdeb9v_nz3_5pxP78k89r7337Ew_v8_v-b7BCON_YxEiA", "version 1"),
    ("COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAA*AAAAAAA", "base64url"),
    ("", "empty"),
    ("COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA.IAAA.IAAA", "appears twice"),
])
def test_invalid_strings_are_refused_with_the_reason(string, reason):
    with pytest.raises(tcf.InvalidTCString, match=reason):
        tcf.decode(string)


def test_cli_prints_json_and_exits_2_on_an_invalid_string(capsys):
    assert tcf.main([FULL]) == 0
    assert json.loads(capsys.readouterr().out)["cmp_id"] == 2
    assert tcf.main(["COtybn4PA_zT4KjACBENAPC"]) == 2
    assert "truncated" in capsys.readouterr().err


# --- a test encoder, for the round trip ------------------------------------------------------


def _bits(value: int, width: int) -> str:
    assert 0 <= value < 1 << width
    return format(value, f"0{width}b")


def _field(ids: list[int], width: int) -> str:
    return "".join("1" if i + 1 in ids else "0" for i in range(width))


def _ranges(ids: list[int]) -> str:
    groups: list[list[int]] = []
    for vendor in sorted(ids):
        if groups and vendor == groups[-1][-1] + 1:
            groups[-1].append(vendor)
        else:
            groups.append([vendor])
    out = _bits(len(groups), 12)
    for group in groups:
        out += ("1" + _bits(group[0], 16) + _bits(group[-1], 16) if len(group) > 1
                else "0" + _bits(group[0], 16))
    return out


def _vendors(ids: list[int], use_ranges: bool) -> str:
    top = max(ids, default=0)
    return _bits(top, 16) + ("1" + _ranges(ids) if use_ranges else "0" + _field(ids, top))


def _base64(bits: str) -> str:
    bits += "0" * (-len(bits) % 6)
    return "".join(tcf.ALPHABET[int(bits[i:i + 6], 2)] for i in range(0, len(bits), 6))


def _letters(text: str) -> str:
    return "".join(_bits(ord(ch) - ord("A"), 6) for ch in text)


def encode(model: dict) -> str:
    core = (_bits(2, 6) + _bits(model["created"], 36) + _bits(model["updated"], 36)
            + _bits(model["cmp_id"], 12) + _bits(model["cmp_version"], 12)
            + _bits(model["screen"], 6) + _letters(model["language"])
            + _bits(model["vendor_list"], 12) + _bits(model["policy"], 6)
            + _bits(model["service_specific"], 1) + _bits(model["non_standard"], 1)
            + _field(model["features"], 12) + _field(model["purposes"], 24)
            + _field(model["li"], 24) + _bits(model["p1"], 1) + _letters(model["country"])
            + _vendors(model["vendors"], model["ranges"])
            + _vendors(model["vendors_li"], not model["ranges"]))
    core += _bits(len(model["restrictions"]), 12)
    for purpose, kind, vendors in model["restrictions"]:
        core += _bits(purpose, 6) + _bits(kind, 2) + _ranges(vendors)
    segments = [_base64(core)]
    if model["disclosed"] is not None:
        segments.append(_base64(_bits(1, 3) + _vendors(model["disclosed"], model["ranges"])))
    return ".".join(segments)


ids = st.lists(st.integers(1, 600), max_size=30, unique=True).map(sorted)
models = st.fixed_dictionaries({
    "created": st.integers(0, 2**36 - 1), "updated": st.integers(0, 2**36 - 1),
    "cmp_id": st.integers(0, 4095), "cmp_version": st.integers(0, 4095),
    "screen": st.integers(0, 63), "language": st.sampled_from(["FI", "SV", "EN"]),
    "vendor_list": st.integers(0, 4095), "policy": st.sampled_from([2, 4, 5]),
    "service_specific": st.integers(0, 1), "non_standard": st.integers(0, 1),
    "features": st.lists(st.integers(1, 12), unique=True).map(sorted),
    "purposes": st.lists(st.integers(1, 24), unique=True).map(sorted),
    "li": st.lists(st.integers(1, 24), unique=True).map(sorted),
    "p1": st.integers(0, 1), "country": st.sampled_from(["FI", "DE", "AA"]),
    "vendors": ids, "vendors_li": ids, "ranges": st.booleans(),
    "restrictions": st.lists(st.tuples(st.integers(1, 24), st.integers(0, 3),
                                       ids.filter(bool)), max_size=3),
    "disclosed": st.none() | ids,
})


@settings(max_examples=150, deadline=None)
@given(models)
def test_every_encoded_model_decodes_to_itself(model):
    decoded = tcf.decode(encode(model))
    assert decoded.created == datetime.fromtimestamp(model["created"] / 10, UTC)
    assert (decoded.cmp_id, decoded.cmp_version, decoded.tcf_policy_version) == (
        model["cmp_id"], model["cmp_version"], model["policy"])
    assert decoded.consent_language == model["language"]
    assert decoded.is_service_specific == bool(model["service_specific"])
    assert decoded.special_feature_optins == model["features"]
    assert decoded.purpose_consents == model["purposes"]
    assert decoded.purpose_legitimate_interests == model["li"]
    assert decoded.vendor_consents == model["vendors"]
    assert decoded.vendor_legitimate_interests == model["vendors_li"]
    assert [(r.purpose_id, r.restriction_type, r.vendor_ids)
            for r in decoded.publisher_restrictions] == model["restrictions"]
    assert decoded.disclosed_vendors == model["disclosed"]


def test_range_entries_spanning_too_many_ids_are_refused_before_they_are_expanded():
    model = {"created": 1, "updated": 1, "cmp_id": 1, "cmp_version": 1, "screen": 1,
             "language": "FI", "vendor_list": 1, "policy": 4, "service_specific": 0,
             "non_standard": 0, "features": [], "purposes": [1], "li": [], "p1": 0,
             "country": "FI", "vendors": [], "vendors_li": [], "ranges": True,
             "restrictions": [(1, 1, list(range(1, 65536)))] * 4, "disclosed": None}
    tc_string = encode(model)
    assert len(tc_string) < 100

    with pytest.raises(tcf.InvalidTCString, match="span more than 200,000 ids"):
        tcf.decode(tc_string)
