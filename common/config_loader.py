"""Load one typed config object from YAML, with errors that name the file, the line and the key.

The YAML is composed into a node tree so that every key keeps its line; the plain data built from
it is validated by a pydantic model (``extra="forbid"`` in the models rejects unknown keys), and
each validation error is reported at the line of the closest key that exists in the file. All
problems are listed, not only the first.

String values may hold placeholders, substituted before validation:

* ``${VAR}``: environment variable ``VAR``; an error when it is not set.
* ``${VAR:-default}``: ``VAR``, or ``default`` when it is unset or empty.
* ``${file:/run/secrets/mqtt}``: the contents of a secret file, stripped of surrounding whitespace;
  a relative path is taken from the config file's folder.
* ``$${...}``: the literal text ``${...}``.

Substituted values are treated as secrets: they never appear in error messages (``<redacted>``
stands in for them) and errors are raised without the pydantic exception chained, whose text would
show the input values.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)
KeyPath = tuple[Any, ...]

REDACTED = "<redacted>"
# $${...} (escaped), ${...} (placeholder), or a ${ that is never closed
PLACEHOLDER = re.compile(r"\$\$\{|\$\{([^{}]*)\}|\$\{")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MERGE_TAG = "tag:yaml.org,2002:merge"
# bounds on what a config may cost to read: every config is a file a person can get wrong or an attacker can write
MAX_CONFIG_BYTES = 1 << 20  # the largest shipped example is ~20 KB
MAX_VALUES = 100_000  # values once aliases are expanded: ten lines of nested aliases otherwise expand to billions
MAX_DEPTH = 64
MAX_SECRET_BYTES = 64 << 10  # a ${file:...} secret (a password, a key)


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file.

    Attributes:
        line: 1-based line in the file, or None when the problem is the file itself.
        key: dotted key (``cameras[0].name``), empty when the problem has no key (a syntax error).
        message: what is wrong; never contains a substituted value.
        column: 1-based column, for YAML syntax errors.
    """

    line: int | None
    key: str
    message: str
    column: int | None = None

    def format(self, name: str) -> str:
        """``name:line: key: message``, leaving out the parts this problem does not have."""
        where = name if self.line is None else f"{name}:{self.line}"
        if self.column is not None:
            where += f":{self.column}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """A config file that cannot be loaded; ``str()`` lists every problem, one per line."""

    def __init__(self, path: Path | str, problems: list[ConfigProblem]):
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(p.format(self.path) for p in problems))


def dotted(path: KeyPath) -> str:
    """``("cameras", 0, "name")`` -> ``cameras[0].name``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


class _Builder:
    """Plain data from a YAML node tree, with the line of every key path and substitutions applied."""

    def __init__(self, loader: yaml.SafeLoader, base_dir: Path):
        self.loader = loader
        self.base_dir = base_dir
        self.lines: dict[KeyPath, int] = {}
        self.secrets: set[str] = set()
        self.placeholders: dict[KeyPath, str] = {}  # key path -> original text with placeholders
        self.problems: list[ConfigProblem] = []
        self._active: set[int] = set()  # nodes being built, to refuse recursive aliases
        self._built = 0  # values built so far, aliases counted each time they are expanded
        self._flattened: dict[int, tuple[list, list]] = {}

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        self._built += 1
        if self._built > MAX_VALUES or len(path) > MAX_DEPTH:
            # aliases of aliases ("billion laughs") expand ten lines into billions of values
            raise _TooLarge(node.start_mark.line + 1, dotted(path[:MAX_DEPTH]),
                            f"more than {MAX_VALUES:,} values or {MAX_DEPTH} levels once its aliases are expanded")
        if id(node) in self._active:
            self._problem(node, path, "recursive YAML alias")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
            assert isinstance(node, yaml.ScalarNode)
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[Any, Any]:
        merged, explicit = self._flatten(node, path)
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in merged:  # `<<: *anchor` entries; explicit keys override them
            key = self._key(key_node, path)
            self.lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*path, key))
        for key_node, value_node in explicit:
            key = self._key(key_node, path)
            if key in first_line:
                self._problem(key_node, (*path, key), f"duplicate key (first at line {first_line[key]})")
                continue
            first_line[key] = self.lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*path, key))
        return result

    def _flatten(self, node: yaml.MappingNode, path: KeyPath) -> tuple[list, list]:
        """(merged, explicit) key/value node pairs; flattening rewrites the node, so it is done once."""
        if id(node) not in self._flattened:
            explicit = [(k, v) for k, v in node.value if k.tag != MERGE_TAG]
            try:
                self.loader.flatten_mapping(node)  # puts the merged pairs first in node.value
            except yaml.MarkedYAMLError as exc:
                self._problem(exc.problem_mark or node.start_mark, path, exc.problem or str(exc))
                return [], explicit
            self._flattened[id(node)] = (node.value[: len(node.value) - len(explicit)], explicit)
        return self._flattened[id(node)]

    def _key(self, node: yaml.Node, path: KeyPath) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self._problem(node, path, "a key must be a plain value, not a mapping or a list")
            return f"<key at line {node.start_mark.line + 1}>"
        return self._construct(node, path)

    def _scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        value = self._construct(node, path)
        if isinstance(value, str) and "${" in value:
            return self._substitute(value, node, path)
        return value

    def _construct(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        try:
            return self.loader.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            self._problem(exc.problem_mark or node.start_mark, path, exc.problem or str(exc))
            return None

    def _substitute(self, text: str, node: yaml.Node, path: KeyPath) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            if match.group(1) is None:
                raise _PlaceholderError("unterminated ${ (write $${ for a literal ${)")
            value = self._resolve(match.group(1))
            if value:
                self.secrets.add(value)
            return value

        try:
            result = PLACEHOLDER.sub(replace, text)
        except _PlaceholderError as exc:
            self._problem(node, path, str(exc))
            return text
        self.placeholders[path] = text
        return result

    def _resolve(self, expression: str) -> str:
        if expression.startswith("file:"):
            return self._read_secret(expression[len("file:"):])
        name, has_default, default = expression.partition(":-")
        if not ENV_NAME.fullmatch(name):
            raise _PlaceholderError(f"${{{expression}}} is not ${{VAR}}, ${{VAR:-default}} or ${{file:PATH}}")
        value = os.environ.get(name)
        if has_default and not value:
            return default
        if value is None:
            raise _PlaceholderError(f"environment variable {name} is not set (use ${{{name}:-default}} for a default)")
        return value

    def _read_secret(self, name: str) -> str:
        if not name:
            raise _PlaceholderError("${file:} needs a path")
        path = self.base_dir / name  # an absolute name replaces the base
        try:
            if not path.is_file():  # /dev/zero, a FIFO or a folder would be read forever or not at all
                raise _PlaceholderError(f"cannot read secret file {path}: not a regular file")
            with path.open("rb") as handle:
                raw = handle.read(MAX_SECRET_BYTES + 1)
            if len(raw) > MAX_SECRET_BYTES:
                raise _PlaceholderError(f"secret file {path} is larger than {MAX_SECRET_BYTES // 1024} KiB")
            return raw.decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise _PlaceholderError(f"cannot read secret file {path}: {reason}") from None

    def _problem(self, where: yaml.Node | yaml.Mark, path: KeyPath, message: str) -> None:
        mark = where.start_mark if isinstance(where, yaml.Node) else where
        self.problems.append(ConfigProblem(mark.line + 1, dotted(path), message))


class _PlaceholderError(Exception):
    pass


class _TooLarge(Exception):
    def __init__(self, line: int, key: str, message: str):
        super().__init__(message)
        self.problem = ConfigProblem(line, key, message)


def _read(path: Path) -> str:
    try:
        size = path.stat().st_size if path.is_file() else 0
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(path, [ConfigProblem(None, "", f"{size} bytes: a config file is at most "
                                                             f"{MAX_CONFIG_BYTES // 1024} KiB")])
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [ConfigProblem(None, "", "config file not found")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [ConfigProblem(None, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    except OSError as exc:
        raise ConfigError(path, [ConfigProblem(None, "", f"cannot read config file: {exc.strerror}")]) from None


def _compose(path: Path, text: str) -> tuple[yaml.SafeLoader, yaml.Node]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError(path, [ConfigProblem(None, "", f"YAML nested more than Python can read: a config "
                                                         f"nests at most {MAX_DEPTH} levels")]) from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(path, [_syntax_problem(exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, [ConfigProblem(None, "", f"YAML syntax error: {exc}")]) from None
    if node is None:
        raise ConfigError(path, [ConfigProblem(None, "", "config file is empty (no YAML document)")])
    return loader, node


def _syntax_problem(exc: yaml.MarkedYAMLError) -> ConfigProblem:
    """``line:column: YAML syntax error: [context (line n): ]problem``."""
    message = exc.problem or "invalid YAML"
    if exc.context:
        context_line = f" (line {exc.context_mark.line + 1})" if exc.context_mark else ""
        message = f"{exc.context}{context_line}: {message}"
    mark = exc.problem_mark or exc.context_mark
    if mark is None:
        return ConfigProblem(None, "", f"YAML syntax error: {message}")
    return ConfigProblem(mark.line + 1, "", f"YAML syntax error: {message}", mark.column + 1)


def _line_for(loc: KeyPath, lines: dict[KeyPath, int]) -> int:
    """The line of the longest prefix of ``loc`` present in the file (the root at worst)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return lines[()]


def redact(text: str, secrets: set[str]) -> str:
    """``text`` with every occurrence of each secret (longest first) replaced by ``<redacted>``."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _validation_problems(exc: ValidationError, builder: _Builder) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        message = redact(error["msg"], builder.secrets)
        if loc in builder.placeholders:
            message += f" (value of {builder.placeholders[loc]})"
        problems.append(ConfigProblem(_line_for(loc, builder.lines), dotted(loc), message))
    return problems


def load_config(path: Path, model: type[ModelT]) -> ModelT:
    """Read, substitute and validate a YAML config file.

    Args:
        path: the YAML file.
        model: the pydantic model of the whole file (``extra="forbid"`` to reject unknown keys).

    Returns:
        The validated model. Substituted secrets are in it as plain values; give secret fields a
        ``SecretStr`` type to keep them out of its repr.

    Raises:
        ConfigError: listing every problem as ``file:line: key: message``.
    """
    path = Path(path)
    loader, node = _compose(path, _read(path))
    builder = _Builder(loader, path.parent)
    try:
        data = builder.build(node, ())
    except _TooLarge as exc:
        raise ConfigError(path, [exc.problem]) from None
    if builder.problems:
        raise ConfigError(path, sorted(builder.problems, key=lambda p: p.line or 0))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = _validation_problems(exc, builder)
    # raised outside the except block: a chained ValidationError would print the input values
    raise ConfigError(path, sorted(problems, key=lambda p: p.line or 0))


def writable_folder(path: Path) -> bool:
    """Whether this user may create ``path``: its nearest existing parent folder is writable (a state
    directory a config names, checked before the service needs it)."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


def validate_config_command(path: Path, model: type[BaseModel], quiet_ok: bool = False) -> int:
    """``--validate-config``: print ``config OK`` (exit 0; nothing with ``quiet_ok``, for a caller that
    checks more) or every problem to stderr (exit 1)."""
    try:
        load_config(path, model)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not quiet_ok:
        print("config OK")
    return 0
