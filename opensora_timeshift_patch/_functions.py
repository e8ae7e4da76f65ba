"""A named family of pure functions (temporal policies, timestep distributions): one decorated function per entry."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Iterator

Fn = Callable[..., Any]


class FunctionRegistry:
    """Functions ``fn(x, **params)`` by name, for a config key such as ``shift_mode`` or ``sample_method``."""

    def __init__(self, key: str, kind: str) -> None:
        self.key, self.kind = key, kind
        self._functions: Dict[str, Fn] = {}

    def register(self, name: str) -> Callable[[Fn], Fn]:
        """Decorator: add ``fn`` under ``name``; a name is taken once."""

        def wrap(fn: Fn) -> Fn:
            if name in self._functions:
                raise KeyError(f"{self.key} {name!r} is already registered ({self._functions[name].__qualname__})")
            self._functions[name] = fn
            return fn

        return wrap

    def get(self, name: str) -> Fn:
        """The function for ``name``, or a ``ValueError`` listing the valid names."""
        try:
            return self._functions[name]
        except (KeyError, TypeError):
            valid = ", ".join(map(repr, self._functions))
            raise ValueError(f"{self.key}={name!r} is not a known {self.kind}; use one of {valid}") from None

    def params(self, name: str) -> Dict[str, Any]:
        """The keyword parameters of ``name``'s function (all but the first argument) with their defaults."""
        return {k: p.default for k, p in list(inspect.signature(self.get(name)).parameters.items())[1:]}

    def unregister(self, name: str) -> None:
        del self._functions[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._functions)
