"""A string that never prints itself."""

from __future__ import annotations

from typing import Any, NoReturn


class Secret:
    """Holds a credential. ``str``, ``repr``, ``format`` and pickling never reveal it.

    The only way to the value is :meth:`reveal`, so every place that uses a secret is greppable.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __format__(self, spec: str) -> str:
        return "********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> NoReturn:
        raise TypeError("Secret values cannot be pickled")

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self


def masked(url: str) -> str:
    """``url`` as an error may show it: no user information (a password) and no query (a
    token), whatever its scheme, even when it does not parse as a URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest
