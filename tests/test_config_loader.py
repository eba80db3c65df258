"""common.config_loader: line numbers, unknown keys, substitution, secrets kept out of error text."""

import traceback
from contextlib import nullcontext as does_not_raise
from textwrap import dedent

import pytest
from pydantic import BaseModel, ConfigDict, Field, field_validator

from common.config_loader import ConfigError, load_config, validate_config_command

SECRET = "s3cr3t-hunter2"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Mqtt(Strict):
    host: str
    port: int = Field(1883, gt=0, lt=65536)
    password: str | None = None

    @field_validator("password")
    @classmethod
    def no_spaces(cls, value: str | None) -> str | None:
        if value is not None and " " in value:
            raise ValueError(f"password {value!r} contains a space")  # echoes the value on purpose
        return value


class Camera(Strict):
    name: str
    fps: float = 1.0


class Edge(Strict):
    mqtt: Mqtt
    cameras: list[Camera] = []


def write(tmp_path, text: str):
    path = tmp_path / "edge.yaml"
    path.write_text(dedent(text).lstrip("\n").replace("TMP", str(tmp_path)))
    (tmp_path / "mqtt.secret").write_text(f"  {SECRET}\n")
    return path


def mqtt(host="broker", port=1883, password=None) -> dict:
    return {"mqtt": {"host": host, "port": port, "password": password}, "cameras": []}


@pytest.mark.parametrize(
    ("text", "env", "expectation", "expected"),
    [
        ("mqtt: {host: broker}", {}, does_not_raise(), mqtt()),
        # environment, defaults, secret files (absolute and relative to the config), escapes
        ("mqtt: {host: '${BROKER}', port: '${PORT}'}", {"BROKER": "b.lan", "PORT": "8883"}, does_not_raise(), mqtt("b.lan", 8883)),
        ("mqtt: {host: 'mqtt://${BROKER}:1883/x'}", {"BROKER": "b.lan"}, does_not_raise(), mqtt("mqtt://b.lan:1883/x")),
        ("mqtt: {host: '${BROKER:-localhost}'}", {}, does_not_raise(), mqtt("localhost")),
        ("mqtt: {host: '${BROKER:-localhost}'}", {"BROKER": ""}, does_not_raise(), mqtt("localhost")),
        ("mqtt: {host: '${BROKER:-localhost}'}", {"BROKER": "b.lan"}, does_not_raise(), mqtt("b.lan")),
        ("mqtt: {host: b, password: '${file:TMP/mqtt.secret}'}", {}, does_not_raise(), mqtt("b", password=SECRET)),
        ("mqtt: {host: b, password: '${file:mqtt.secret}'}", {}, does_not_raise(), mqtt("b", password=SECRET)),
        ("mqtt: {host: '$${BROKER}'}", {"BROKER": "b.lan"}, does_not_raise(), mqtt("${BROKER}")),
        # a missing top-level field points at the document's first line
        ("# line 1\nbase: {host: a, port: 1}\n", {}, pytest.raises(ConfigError), [(2, "mqtt"), (2, "base")]),
        (
            """
            # line 1
            mqtt:
              host: broker
              port: abc
            """,
            {}, pytest.raises(ConfigError), [(4, "mqtt.port")],
        ),
        (
            """
            mqtt:
              host: broker

              hots: typo
            """,
            {}, pytest.raises(ConfigError), [(4, "mqtt.hots")],
        ),
        (
            """
            mqtt: {host: broker}
            cameras:
              - name: a
              - name: b
                fsp: 2
            """,
            {}, pytest.raises(ConfigError), [(5, "cameras[1].fsp")],
        ),
        (
            """
            # the mqtt block lacks its host
            mqtt:
              port: 1883
            """,
            {}, pytest.raises(ConfigError), [(2, "mqtt.host")],
        ),
        (
            """
            cameras:
              - fps: x
            mqtt:
              host: a
              host: b
            """,
            {}, pytest.raises(ConfigError), [(5, "mqtt.host")],
        ),
        (  # every error is listed, in file order
            """
            cameras:
              - fps: x
            mqtt:
              port: 0
            """,
            {}, pytest.raises(ConfigError), [(2, "cameras[0].name"), (2, "cameras[0].fps"), (3, "mqtt.host"), (4, "mqtt.port")],
        ),
        (
            """
            mqtt:
              host: broker
              password: ${MQTT_PASSWORD}
            """,
            {}, pytest.raises(ConfigError, match=r"edge\.yaml:3: mqtt\.password: environment variable MQTT_PASSWORD is not set"), [(3, "mqtt.password")],
        ),
        (
            """
            mqtt:
              host: broker
              password: ${file:missing.secret}
            """,
            {}, pytest.raises(ConfigError, match=r"edge\.yaml:3: mqtt\.password: cannot read secret file .*missing\.secret"), [(3, "mqtt.password")],
        ),
        (
            """
            mqtt:
              host: ${BROKER
            """,
            {}, pytest.raises(ConfigError, match="unterminated"), [(2, "mqtt.host")],
        ),
        (
            """
            mqtt:
              host: ${not a name}
            """,
            {}, pytest.raises(ConfigError, match="is not"), [(2, "mqtt.host")],
        ),
        (
            """
            mqtt:
              host: broker
              port: ${PORT}
            """,
            {"PORT": "eighty"}, pytest.raises(ConfigError, match=r"edge\.yaml:3: mqtt\.port: Input should be a valid integer.*\(value of \$\{PORT\}\)"), [(3, "mqtt.port")],
        ),
    ],
)
def test_load_config(tmp_path, monkeypatch, text, env, expectation, expected):
    for name in ("BROKER", "PORT", "MQTT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = write(tmp_path, text)
    with expectation as raised:
        config = load_config(path, Edge)
    if raised is None:
        assert config.model_dump() == expected
    else:
        assert [(p.line, p.key) for p in raised.value.problems] == expected
        for problem in raised.value.problems:
            assert str(raised.value).count(f"{path}:{problem.line}: {problem.key}: ") >= 1


def test_error_text_is_file_line_key_message(tmp_path):
    path = write(tmp_path, "mqtt:\n  host: b\n  port: abc\n  extra: 1\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, Edge)
    assert str(raised.value).splitlines() == [
        f"{path}:3: mqtt.port: Input should be a valid integer, unable to parse string as an integer",
        f"{path}:4: mqtt.extra: Extra inputs are not permitted",
    ]


@pytest.mark.parametrize(
    ("text", "env", "secret"),
    [
        ("mqtt: {host: b, port: '${file:mqtt.secret}'}", {}, SECRET),  # wrong type
        ("mqtt: {host: b, password: 'x ${file:mqtt.secret}'}", {}, SECRET),  # validator echoes the value
        ("mqtt: {host: b, password: '${PASSWORD} x'}", {"PASSWORD": "env-secret-1"}, "env-secret-1"),
        ("mqtt: {host: b, password: '${PASSWORD} x', port: -1, bad: 1}", {"PASSWORD": "env-secret-1"}, "env-secret-1"),
    ],
)
def test_substituted_values_never_reach_error_text(tmp_path, monkeypatch, text, env, secret):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, Edge)
    shown = "".join(traceback.format_exception(raised.value))  # what a log of the crash would show
    assert "mqtt.p" in shown
    assert secret not in shown
    assert "input_value" not in shown  # no pydantic ValidationError chained to it


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# comment\nmqtt:\n\thost: a\n", r"edge\.yaml:3:1: YAML syntax error: .*found character '\\t'"),
        ("mqtt: {host: a}\ncameras: [a, b\nx: 3\n", r"edge\.yaml:3:2: YAML syntax error: while parsing a flow sequence \(line 2\): expected ',' or ']'"),
        ("mqtt: broker\n port: 2\n", r"edge\.yaml:2:6: YAML syntax error: mapping values are not allowed here"),
        ("mqtt: {host: a}\n---\nmqtt: {host: b}\n", r"edge\.yaml:2:1: YAML syntax error: .*another document"),
        ("mqtt: {host: !vault a}\n", r"edge\.yaml:1: mqtt\.host: could not determine a constructor for the tag '!vault'"),
        ("", r"edge\.yaml: config file is empty"),
        ("# only a comment\n", r"edge\.yaml: config file is empty"),
    ],
)
def test_yaml_problems(tmp_path, text, expected):
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path, Edge)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml", Edge)


def test_recursive_alias_is_refused(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("mqtt: {host: a}\ncameras: &c [*c]\n")
    with pytest.raises(ConfigError, match=r"edge\.yaml:2: cameras\[0\]: recursive YAML alias"):
        load_config(path, Edge)


_LAUGHS = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))


@pytest.mark.parametrize("write, expected", [
    # ten lines of nested aliases expand to a billion values: it ran out of memory after a minute
    (lambda p: p.write_text(_LAUGHS), r"edge\.yaml:\d+: a\d.*: more than 100,000 values or 64 levels once its aliases"),
    (lambda p: p.write_text("mqtt: " + "[" * 70 + "]" * 70 + "\n"), r"more than 100,000 values or 64 levels"),
    (lambda p: p.write_text("mqtt: " + "[" * 5000 + "]" * 5000 + "\n"),  # was a RecursionError traceback
     r"edge\.yaml: YAML nested more than Python can read"),
    (lambda p: p.write_text("mqtt:\n  host: ${file:/dev/zero}\n"),  # was read until memory ran out
     r"edge\.yaml:2: mqtt\.host: cannot read secret file /dev/zero: not a regular file"),
    (lambda p: p.write_text("# padding\n" * 120_000), r"edge\.yaml: 1200000 bytes: a config file is at most 1024 KiB"),
])
def test_a_config_that_would_cost_unbounded_memory_or_time_is_one_line(tmp_path, write, expected):
    path = tmp_path / "edge.yaml"
    write(path)
    with pytest.raises(ConfigError, match=expected):
        load_config(path, Edge)


def test_a_secret_file_larger_than_a_secret_is_refused(tmp_path):
    (tmp_path / "key").write_bytes(b"k" * (64 * 1024 + 1))
    path = tmp_path / "edge.yaml"
    path.write_text("mqtt:\n  host: ${file:key}\n")
    with pytest.raises(ConfigError, match=r"mqtt\.host: secret file .*key is larger than 64 KiB"):
        load_config(path, Edge)


def test_merge_keys_are_overridden_by_explicit_keys(tmp_path):
    class Anchored(Edge):
        defaults: dict

    path = tmp_path / "edge.yaml"
    path.write_text("defaults: &d {host: a, port: 1}\nmqtt:\n  <<: *d\n  port: 2\n")
    assert load_config(path, Anchored).mqtt.model_dump() == {"host": "a", "port": 2, "password": None}


@pytest.mark.parametrize(
    ("text", "code", "stdout", "stderr"),
    [
        ("mqtt: {host: a}\n", 0, "config OK\n", ""),
        ("mqtt: {host: a, port: x}\n", 1, "", "edge.yaml:1: mqtt.port: Input should be a valid integer"),
    ],
)
def test_validate_config_command(tmp_path, capsys, text, code, stdout, stderr):
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    assert validate_config_command(path, Edge) == code
    out, err = capsys.readouterr()
    assert out == stdout
    assert stderr in err and (stderr or err == "")
