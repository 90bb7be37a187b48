"""One small registry: names -> entries, filled by decorators, read through one lookup that names the field.

Models, datasets, mask methods, allocations and reconstructions each keep a `Registry`; their modules
add the decorator that turns a function and its options into an entry (`register_model`, ...).
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name. `get` refuses an unknown name with "<field> must be one of ...; got ...".

    Args:
        field: the config or spec field the names are given in (it starts the error message).
        ordered: list names in registration order (simplest first) instead of alphabetically.
        hint: added after the known names in the error (other accepted spellings).
    """

    def __init__(self, field: str, *, ordered: bool = False, hint: str = "") -> None:
        self.field, self.ordered, self.hint = field, ordered, hint
        self.entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> None:
        self.entries[name] = entry

    def get(self, name: str) -> T:
        if name not in self.entries:
            known = ", ".join(map(repr, self.names()))
            raise ValueError(f"{self.field} must be one of {known}{self.hint}; got {name!r}")
        return self.entries[name]

    def names(self) -> list[str]:
        return list(self.entries) if self.ordered else sorted(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries
