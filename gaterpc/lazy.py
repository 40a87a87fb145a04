"""The "not set" sentinel, validators and the lazily rendered descriptor.

These are the building blocks of :mod:`gaterpc.global_settings`
(and public in ``gaterpc.utils``).  The module imports nothing from the rest of the
package, so every other module can depend on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Generic, Optional, TypeVar, Union, overload

__all__ = (
    "Empty",
    "empty",
    "Validator",
    "TypeValidator",
    "ensure_mkdir",
    "LazyAttribute",
)


class Empty:
    """Type of the ``empty`` sentinel; its only behaviour is being falsy."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False


empty = Empty()
"""The library-wide sentinel meaning "not set"; always tested by identity."""


class Validator:
    """A callable that returns the value it is given unchanged.

    Subclasses override ``__call__`` to check the value and raise on a bad
    one.  A truthy ``error_message`` replaces the class-level message.
    """

    error_message: Optional[str] = None

    def __init__(self, error_message: Optional[str] = None) -> None:
        if error_message:
            self.error_message = error_message

    def __call__(self, value: Any) -> Any:
        return value


class TypeValidator(Validator):
    """Accept only instances of ``require_type`` (a type or tuple of types).

    ``TypeValidator(int)("x")`` raises ``TypeError("require <class 'int'>.")``.
    """

    error_message: str = "require {require_type}."

    def __init__(
        self, require_type: Union[type, tuple[type, ...]], error_message: Optional[str] = None
    ) -> None:
        super().__init__(error_message)
        self.require_type = require_type

    def __call__(self, value: Any) -> Any:
        if isinstance(value, self.require_type):
            return value
        raise TypeError(self.error_message.format(require_type=self.require_type))


def ensure_mkdir(p: Union[str, Path]) -> Path:
    """Create directory ``p`` (with parents, if missing) and return it as a Path."""
    if isinstance(p, str):
        p = Path(p)
    p.mkdir(parents=True, exist_ok=True)
    return p


_T = TypeVar("_T")


class LazyAttribute(Generic[_T]):
    """A data descriptor whose value may be rendered lazily and cached.

    * ``raw`` is the stored value; it is kept on the descriptor, so it is
      shared by every instance of the owner class.
    * ``render(instance, raw)``, if given, computes the value seen on an
      instance; the result is cached in ``instance.__dict__[_CACHE_KEY]``
      under the attribute name until the next assignment.
    * ``process(instance, value)``, if given, validates/converts a value
      being assigned; its exceptions propagate.

    Reading the attribute on the class returns the descriptor itself.
    """

    _CACHE_KEY = "_lazy_attribute_cache_"

    def __init__(
        self,
        raw: Any = empty,
        render: Optional[Callable[[Any, Any], _T]] = None,
        process: Optional[Callable[[Any, Any], Any]] = None,
    ) -> None:
        self.raw = raw
        self.render = render
        self.process = process

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, instance: None, owner: Optional[type] = None) -> LazyAttribute[_T]: ...

    @overload
    def __get__(self, instance: object, owner: Optional[type] = None) -> _T: ...

    def __get__(self, instance: Any, owner: Optional[type] = None) -> Any:
        if instance is None:
            return self
        render = self.render
        if render is None:
            return self.raw
        name = self._name
        cache = instance.__dict__.get(self._CACHE_KEY)
        if cache is None:
            cache = instance.__dict__[self._CACHE_KEY] = {}
        else:
            try:
                return cache[name]
            except KeyError:
                pass
        value = render(instance, self.raw)
        cache[name] = value
        return value

    def __set__(self, instance: Any, value: Any) -> None:
        if self.process is not None:
            value = self.process(instance, value)
        self.raw = value
        cache = instance.__dict__.get(self._CACHE_KEY)
        if cache:
            cache.clear()
