"""Line protocol rendering and the InfluxDB configuration (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.samples import DeadLetter, Quality, RollEvent, Sample, SourceKind
from tests.conftest import DEFAULTS, write_config
from twin.config import ConfigError, InfluxStoreConfig, load_config
from twin.store.influx import LineProtocol, _str_field, _unstr, tag_info_from_tagmap

T0 = 1_790_000_000 * 10**9


def test_sample_tags_fields_and_timestamp() -> None:
    lp = LineProtocol("ns", roll_as_tag=True, tag_info=lambda t: ("calendering", "MP", "actual"))
    s = Sample("line 1", "calendering.gap_actual", 61.25, "um", T0 + 5, T0 + 9, Quality.UNCERTAIN, "R,42", 812.5)
    assert lp.sample(s) == (
        b"twin_sample,kind=MP,line=line\\ 1,role=actual,roll=R\\,42,step=calendering,tag=calendering.gap_actual,"
        b"unit=um value=61.25,quality=1i,received_ns=1790000000000000009i,web_pos_m=812.5 1790000000000000005")


def test_roll_as_field_precision_and_missing_tag_info() -> None:
    lp = LineProtocol("ms", roll_as_tag=False)
    s = Sample("L1", "coating.speed", 3.0, "m/min", T0 + 7_000_000, T0, Quality.GOOD, 'R"1', None)
    # without a tag map, the step is the tag id's first part; kind / role are left out
    assert lp.sample(s) == (b'twin_sample,line=L1,step=coating,tag=coating.speed,unit=m/min '
                            b'value=3.0,quality=0i,received_ns=1790000000000000000i,roll="R\\\\\\"1" 1790000000007')


def test_string_fields_are_reversible_and_single_line() -> None:
    for text in ['{"value": "a"}', "two\nlines\r", 'back\\slash "quoted"', "ünïcode ✓", ""]:
        field = _str_field(text)
        assert "\n" not in field and field.startswith('"') and field.endswith('"')
        # the server unescapes \\ and \" in string fields; we undo the JSON escaping on read
        stored = field[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        assert _unstr(stored) == text


def test_dead_letters_in_the_same_nanosecond_stay_distinct() -> None:
    lp = LineProtocol("ns", writer="w1")
    d = DeadLetter(SourceKind.MQTT, "pilot/x", '{"value": "a"}', "expected a number", "wrong_type", T0, "mqtt", "L1")
    a, b = lp.dead_letter(d), lp.dead_letter(d)
    assert a != b and b",n=1," in b and b",n=" not in a
    assert a.endswith(str(T0).encode()) and b.endswith(str(T0).encode())  # the time stays exact
    assert lp.roll(RollEvent("L1", "calendering", "R-7", T0, "calendering.roll_id")) == (
        b'twin_roll,line=L1,roll=R-7,step=calendering tag_id="calendering.roll_id" 1790000000000000000')


def test_tag_info_from_the_tag_map() -> None:
    from ontology.tagmap import TagMap

    info = tag_info_from_tagmap(TagMap.load(DEFAULTS / "tagmap.toml"))
    step, kind, role = info("calendering.gap_actual")
    assert (step, kind, role) == ("calendering", "MP", "actual")
    assert info("no.such_tag") == (None, None, None)


def test_config_validates_and_takes_secrets_from_the_environment(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, extra=(
        '[store]\nbackend = "influxdb"\n[store.influxdb]\nurl = "https://influx.plant:8086"\norg = "plant"\n'
        'bucket = "twin"\noutbox_path = "state/outbox.sqlite"\n')),
        environ={"TWIN_STORE__INFLUXDB__TOKEN": "s3cret"})
    c = cfg.store.influxdb
    assert c.token == "s3cret" and c.write_api.value == "v2" and c.query_api.value == "influxql"
    assert c.outbox_path == (tmp_path / "state" / "outbox.sqlite").resolve()  # relative to the config file
    with pytest.raises(ValueError, match="outbox_capacity"):
        InfluxStoreConfig(outbox_capacity=10, batch_size=100)
    with pytest.raises(ValueError, match="token or a username"):
        InfluxStoreConfig(token="t", username="u")
    with pytest.raises(ConfigError, match="store.influxdb.write_api"):
        load_config(write_config(tmp_path, extra='[store.influxdb]\nwrite_api = "v3"\n'))
