"""edge.wire.messages: every kind's encode() meets its JSON Schema, and the schemas are strict."""

import base64
import copy
import io
import json
import re
import subprocess
import sys
from contextlib import nullcontext as does_not_raise
from datetime import datetime, timedelta, timezone

import jsonschema
import numpy as np
import pytest
from PIL import Image

from common import wire as contract
from edge.events.bursts import Event
from edge.wire.messages import AlertMessage, Box, EmbeddingMessage, EventMessage, Picture, StatusMessage

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
DEVICE, SITE = "cam-ridge-01", "north ridge"
PDT = timezone(timedelta(hours=-7))

FOX = Event(
    id="6f1c2b9e-0d4f-5a7b-9c1e-2f3a4b5c6d7e",
    source_id="sd",
    start=datetime(2024, 5, 1, 6, 12, 3, tzinfo=PDT),
    end=datetime(2024, 5, 1, 6, 12, 9, 250000, tzinfo=PDT),
    frames=4,
    label="fox",
    score=0.8712,
    probs={"other": 0.061, "fox": 0.8712, "rodent": 0.0411},  # deliberately not best first
    counts={"fox": 2},
    closed=True,
)
EMPTY = Event(id="9b0e", source_id="usb0", start=datetime(2024, 5, 2, 23, 1, tzinfo=PDT),
              end=datetime(2024, 5, 2, 23, 1, tzinfo=PDT), frames=1, label=None, score=0.0)
FOX_BOX = Box((0.1, 0.25, 0.3, 0.5), 0.93, "fox", 0.88, "classifier")


def validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(contract.load_schema(kind))


def wire(message) -> dict:
    """The message as a consumer reads it off the wire."""
    return json.loads(message.encode())


@pytest.fixture(scope="module")
def thumbnail(data) -> Picture:
    """A real camera-trap frame as a 160-px JPEG thumbnail."""
    with Image.open(data / "frames" / "animl_samples" / "sample-img-fox.jpg") as image:
        image = image.convert("RGB")
        image.thumbnail((160, 160))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        return Picture(buffer.getvalue(), *image.size)


def embedding(**overrides) -> EmbeddingMessage:
    args = dict(
        device=DEVICE, event_id=FOX.id, source_id="sd", frame_time=datetime(2024, 5, 1, 6, 12, 5, tzinfo=PDT),
        box=FOX_BOX, model="tf_efficientnet_lite0", model_version="2024.05.1",
        vector=np.linspace(-1, 1, 1280, dtype=np.float32) / 3,
    )
    return EmbeddingMessage(**{**args, **overrides})


def built(thumbnail) -> dict[str, list]:
    """Every kind, with the variants that matter (nulls, empty dicts, a thumbnail, a crop)."""
    return {
        "status": [
            StatusMessage(device=DEVICE, state="online", bundle_version="2024.05.1", health={"queue_depth": 3}),
            StatusMessage(device=DEVICE, state="offline"),
        ],
        "event": [
            EventMessage(device=DEVICE, site=SITE, event=FOX, alerted=True),
            EventMessage(device=DEVICE, site=None, event=EMPTY, alerted=False),
        ],
        "alert": [
            AlertMessage(device=DEVICE, site=SITE, event=FOX, thumbnail=thumbnail),
            AlertMessage(device=DEVICE, site=None, event=EMPTY, thumbnail=None),
        ],
        "embedding": [embedding(), embedding(box=Box((0, 0, 1, 1), 0.5, "person", 0.7, "detector")),
                      embedding(crop=thumbnail)],
    }


def test_schemas_are_valid_draft_2020_12():
    for kind in contract.KINDS:
        schema = contract.load_schema(kind)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["properties"]["schema"] == {"const": contract.SCHEMAS[kind]}


def test_every_kind_has_one_message_class(thumbnail):
    assert sorted(built(thumbnail)) == sorted(contract.KINDS)
    assert {type(m).kind for messages in built(thumbnail).values() for m in messages} == set(contract.KINDS)


@pytest.mark.parametrize("kind", contract.KINDS)
def test_messages_meet_their_schema(kind, thumbnail):
    payloads = [wire(message) for message in built(thumbnail)[kind]]
    for payload in payloads:
        validator(kind).validate(payload)
        assert payload["schema"] == contract.SCHEMAS[kind]
        assert payload["device"] == DEVICE
        assert UUID4.match(payload["id"])
        assert datetime.fromisoformat(payload["time"]).utcoffset() == timedelta(0), "time is when it was built, in UTC"
    assert len({p["id"] for p in payloads}) == len(payloads), "every message gets its own id"
    for other in set(contract.KINDS) - {kind}:  # a payload never passes for another kind
        assert not validator(other).is_valid(payloads[0])


def test_event_fields():
    payload = wire(EventMessage(device=DEVICE, site=SITE, event=FOX, alerted=True))
    assert payload["probs"] == [["fox", 0.8712], ["other", 0.061], ["rodent", 0.0411]]
    assert (payload["start"], payload["end"]) == ("2024-05-01T06:12:03.000-07:00", "2024-05-01T06:12:09.250-07:00")
    assert (payload["event_id"], payload["source"], payload["frames"]) == (FOX.id, "sd", 4)
    assert (payload["counts"], payload["closed"], payload["alerted"], payload["site"]) == ({"fox": 2}, True, True, SITE)


def test_alert_carries_the_thumbnail_and_the_sighting_time(thumbnail):
    payload = wire(AlertMessage(device=DEVICE, site=SITE, event=FOX, thumbnail=thumbnail))
    thumb = payload["thumbnail"]
    assert base64.b64decode(thumb["base64"]) == thumbnail.jpeg
    assert (thumb["format"], thumb["bytes"]) == ("jpeg", len(thumbnail.jpeg))
    with Image.open(io.BytesIO(base64.b64decode(thumb["base64"]))) as image:
        assert image.size == (thumb["width"], thumb["height"]) == (thumbnail.width, thumbnail.height)
    assert payload["start"] == "2024-05-01T06:12:03.000-07:00"
    assert payload["time"].endswith("+00:00") and payload["time"] != payload["start"]


def test_embedding_carries_the_box_and_its_one_label():
    payload = wire(embedding(box=Box((0.1, 0.2, 0.3, 0.4), 0.8, "person", 0.8, "detector")))
    assert (payload["bbox"], payload["label"], payload["label_score"], payload["label_source"]) == (
        [0.1, 0.2, 0.3, 0.4], "person", 0.8, "detector")


def test_embedding_vector_is_rounded_to_six_decimals():
    vector = np.array([0.12345678, -0.99999951, 1 / 3, 0.0], dtype=np.float64)
    payload = wire(embedding(vector=vector))
    assert payload["vector"] == [0.123457, -1.0, 0.333333, 0.0]
    assert payload["dim"] == 4
    assert all(type(v) is float for v in payload["vector"])  # JSON numbers, not numpy scalars


@pytest.mark.parametrize(
    ("device", "kind", "expectation"),
    [
        ("cam-01", "alert", does_not_raise()),
        ("Cam_01.ridge", "embedding", does_not_raise()),
        ("", "status", pytest.raises(ValueError, match="non-empty")),
        ("cam/01", "status", pytest.raises(ValueError, match="'/'")),
        ("cam+", "event", pytest.raises(ValueError, match=r"'\+'")),
        ("#", "event", pytest.raises(ValueError, match="'#'")),
        ("cam-01", "frames", pytest.raises(ValueError, match="unknown message kind")),
    ],
)
def test_topic(device, kind, expectation):
    with expectation:
        assert contract.topic("trapedge", device, kind) == f"trapedge/{device}/{kind}"


@pytest.mark.parametrize(
    ("build", "expectation"),
    [
        (lambda: StatusMessage(device=DEVICE, state="sleeping"), pytest.raises(ValueError, match="online")),
        (lambda: StatusMessage(device="a/b", state="online"), pytest.raises(ValueError, match="device id")),
        (lambda: StatusMessage(device=DEVICE, state="online", time=datetime(2024, 5, 1)),
         pytest.raises(ValueError, match="no UTC offset")),
        (lambda: Picture(b"", 10, 10), pytest.raises(ValueError, match="JPEG bytes")),
        (lambda: embedding(vector=np.zeros((2, 8))), pytest.raises(ValueError, match="1-D")),
        (lambda: embedding(vector=np.array([0.1, np.nan])), pytest.raises(ValueError, match="finite")),
        (lambda: embedding(frame_time=datetime(2024, 5, 1)).encode(), pytest.raises(ValueError, match="no UTC offset")),
        (lambda: Box((0.1, 0.2, 0.3), 0.9, "fox", 0.9, "classifier"), pytest.raises(ValueError, match="4 numbers")),
        (lambda: Box((-0.1, 0.2, 0.3, 0.4), 0.9, "fox", 0.9, "classifier"), pytest.raises(ValueError, match=r"\[0, 1\]")),
        (lambda: embedding(crop=Picture(b"x" * (contract.MAX_CROP_BYTES + 1), 8, 8)),
         pytest.raises(ValueError, match="at most")),
        (lambda: StatusMessage(device=DEVICE, state="online", health={"temp": float("nan")}).encode(),
         pytest.raises(ValueError, match="JSON compliant")),
        (lambda: contract.load_schema("frames"), pytest.raises(ValueError, match="unknown message kind")),
    ],
)
def test_messages_refuse_bad_input(build, expectation):
    with expectation:
        build()


def rejected(match: str | None = None):
    return pytest.raises(jsonschema.ValidationError, match=match)


def _drop(key):
    return lambda p: p.pop(key)


def _set(key, value):
    return lambda p: p.__setitem__(key, value)


def _set_thumb(key, value):
    return lambda p: p["thumbnail"].__setitem__(key, value)


@pytest.mark.parametrize(
    ("kind", "mutate", "expectation"),
    [
        ("event", lambda p: None, does_not_raise()),
        ("event", _drop("id"), rejected("'id' is a required property")),
        ("event", _set("id", "not-a-uuid"), rejected("does not match")),
        ("event", _set("schema", "trapedge.event/1"), rejected("was expected")),
        ("event", _set("schema", "trapedge.alert/2"), rejected("was expected")),
        ("event", _set("time", "2024-05-01T06:12:03.000-07:00"), rejected("does not match")),
        ("event", _set("start", "2024-05-01T06:12:03.000"), rejected("does not match")),
        ("event", _set("frames", "4"), rejected("is not of type 'integer'")),
        ("event", _set("score", 1.5), rejected("greater than the maximum")),
        ("event", _set("probs", [["fox"]]), rejected("too short")),
        ("event", _set("counts", {"fox": -1}), rejected("less than the minimum")),
        ("event", _set("start", "yesterday"), rejected("does not match")),
        ("event", _set("colour", "red"), rejected("Additional properties")),
        ("event", _set("device", "cam/01"), rejected("does not match")),
        ("status", lambda p: None, does_not_raise()),
        ("status", _set("state", "asleep"), rejected("is not one of")),
        ("status", _set("time", "2024-05-01T06:12:03"), rejected("does not match")),
        ("status", _drop("health"), rejected("'health' is a required property")),
        ("alert", lambda p: None, does_not_raise()),
        ("alert", _set_thumb("format", "png"), rejected()),
        ("alert", lambda p: p["thumbnail"].pop("base64"), rejected()),
        ("alert", _set_thumb("exif", {}), rejected()),
        ("alert", _set("thumbnail", "aGVsbG8="), rejected()),
        ("embedding", lambda p: None, does_not_raise()),
        ("embedding", _set("vector", ["0.1"]), rejected("is not of type 'number'")),
        ("embedding", _set("vector", []), rejected("should be non-empty")),
        ("embedding", _set("bbox", [0.1, 0.2, 0.3]), rejected("too short")),
        ("embedding", _set("label_score", "high"), rejected()),
        ("embedding", _set("label_source", "guess"), rejected("is not one of")),
        ("embedding", _drop("label_source"), rejected("'label_source' is a required property")),
        ("embedding", _set("dim", 0), rejected("less than the minimum")),
    ],
)
def test_schemas_reject_malformed_payloads(kind, mutate, expectation, thumbnail):
    payload = copy.deepcopy(wire(built(thumbnail)[kind][0]))
    mutate(payload)
    with expectation:
        validator(kind).validate(payload)


def test_edge_runtime_needs_neither_jsonschema_nor_torch():
    code = "import sys, edge.wire.messages, edge.publish.mqtt, edge.app.service; print(sorted({'jsonschema', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_the_schema_names_every_label_source_an_embedded_box_can_have():
    """A box decided a new way (e.g. the frame-context ensemble) must not be refused by central."""
    from typing import get_args, get_type_hints

    from edge.analysis.labels import SOURCES, WHOLE_FRAME

    embeddable = set(SOURCES) - {WHOLE_FRAME}  # a whole-frame label is never embedded
    assert set(contract.load_schema("embedding")["properties"]["label_source"]["enum"]) == embeddable
    assert set(get_args(get_type_hints(Box)["label_source"])) == set(SOURCES)
