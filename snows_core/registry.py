"""One small registry: names -> entries, filled by decorators, read through one lookup that names the field.

Models, datasets, mask methods, allocations, reconstructions and run kinds each keep a `Registry`; their
`register_*` decorators are `Registry.decorator` with the entry their options make of the function, and their
`get_*` / `list_*` are the registry's `get` and `names`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable)


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

    def decorator(self, name: str, make: Callable[[F], T] | None = None) -> Callable[[F], F]:
        """A decorator adding `make(fn)` (the function itself without `make`) under `name`; fn is returned as is."""

        def wrap(fn: F) -> F:
            self.add(name, fn if make is None else make(fn))
            return fn

        return wrap

    def get(self, name: str) -> T:
        """The entry called `name`; ValueError naming the field and the known names otherwise."""
        if name not in self.entries:
            known = ", ".join(map(repr, self.names()))
            raise ValueError(f"{self.field} must be one of {known}{self.hint}; got {name!r}")
        return self.entries[name]

    def names(self) -> list[str]:
        """The registered names, in registration order when `ordered`, else sorted."""
        return list(self.entries) if self.ordered else sorted(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries
