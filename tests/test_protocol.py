"""The protocol is named once per language: Python (onestock/domain/protocol.py, state/keys.py)
and Lua (state/lua/lib_protocol.lua). These tests hold the two to the same values, and
every script to the names instead of literals."""

from __future__ import annotations

import re

import pytest

from onestock.domain import protocol
from onestock.domain.protocol import Code, ProtocolError, code_of
from state import keys
from tests.conftest import ROOT

LUA = ROOT / "state" / "lua"
DEF = re.compile(r"^local ([A-Z_]+) = '((?:[^'\\]|\\\d{1,3})*)'$")


def lua_string(text: str) -> str:
    """A Lua 5.1 single-quoted string's value (decimal escapes only, as the lib writes)."""
    return re.sub(r"\\(\d{1,3})", lambda m: chr(int(m.group(1))), text)


def lua_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for line in (LUA / "lib_protocol.lua").read_text().splitlines():
        m = DEF.match(line)
        if m:
            assert m.group(1) not in names, f"{m.group(1)} defined twice in lib_protocol.lua"
            names[m.group(1)] = lua_string(m.group(2))
        else:
            assert line == "" or line.startswith("--"), f"not a definition: {line!r}"
    return names


def python_value(name: str) -> str:
    if name in Code.__members__:
        return Code[name].value
    if hasattr(protocol, name):
        return str(getattr(protocol, name))
    return str(getattr(keys, name))


def test_lua_names_equal_python_values() -> None:
    names = lua_names()
    assert len(names) > 35
    for name, value in names.items():
        assert value == python_value(name), name


def test_every_code_and_internal_field_has_a_lua_name() -> None:
    names = lua_names()
    assert set(Code.__members__) <= set(names)
    internal = {
        n for n, v in vars(keys).items() if n.isupper() and isinstance(v, str) and v[:1] == "\0"
    }
    assert internal <= set(names), internal - set(names)


def test_no_internal_field_literal_in_a_script() -> None:
    """A script names an internal field ('\\0...') only through lib_protocol.lua (comments
    may quote one)."""
    for path in sorted(LUA.glob("*.lua")):
        if path.name == "lib_protocol.lua":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("--", 1)[0]
            assert not re.search(r"'\\0|\"\\0", code), f"{path.name}:{n}: {line.strip()}"


@pytest.mark.parametrize("value", ["", "Z", "?", "a1"])
def test_an_unknown_code_raises(value: str) -> None:
    with pytest.raises(ProtocolError, match="unknown outcome code"):
        code_of(value)


def test_known_codes_decode() -> None:
    assert code_of("A\x1fL1\x1fS\x1f1") is Code.ACCEPTED
    assert code_of("R\x1fsold_out") is Code.REJECTED
    assert code_of("r") is Code.CAMPAIGN_REJECTED
