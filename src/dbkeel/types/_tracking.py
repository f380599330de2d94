"""In-place change tracking for JSON and list columns, and checks at assignment time.

SQLAlchemy saves a column only when the attribute is *set*; ``user.settings["a"] = 1``
mutates the loaded dict and is silently lost (its ``MutableDict`` tracks one level only).
Here every dict and list of a tracked value is wrapped - nested ones too - and each
wrapper points at its root, which flags the owning attribute modified on any change.

Wrapping is lazy: loading a row wraps only the root (a shallow copy in C); a nested
dict or list is wrapped, and stored back in its parent, the first time it is handed
out (``doc["a"]``, ``.get``, ``.values()``, ``.items()``, iteration). A nested value can
only be changed through something handed out, so every change still reaches the root,
and a document that is only read costs one shallow copy instead of a copy of all of it.

For every column whose type is a dbkeel ``PortableType``, a ``set`` listener also runs
the type's ``coerce_set`` check, so ``user.id = "nonsense"`` fails on that line, naming
the column, instead of at the next flush.
"""

from __future__ import annotations

import weakref
from typing import Any, SupportsIndex

from sqlalchemy import event
from sqlalchemy.orm import Mapper, attributes
from sqlalchemy.orm.state import InstanceState

from dbkeel.types._base import PortableType

__all__ = ["TrackedDict", "TrackedList", "track"]


class _Tracked:
    """Mixin: points at the root container; the root knows its owners."""

    _root: _Tracked
    _owners: weakref.WeakKeyDictionary[InstanceState[Any], str] | None = None

    def changed(self) -> None:
        """Flag every attribute holding this value's root as modified."""
        owners = self._root._owners
        if owners:
            for state, key in list(owners.items()):
                obj = state.obj()
                if obj is not None:
                    attributes.flag_modified(obj, key)

    def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
        # pickle / copy / deepcopy give plain containers: owners are per session object
        return (_plain, (_plain(self),))


def _plain(value: Any) -> Any:
    # dict.items / list.copy: the raw items, without wrapping them on the way
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in dict.items(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in (list.copy(value) if isinstance(value, list) else value)]
    return value


def _wrap(value: Any, root: _Tracked | None) -> Any:
    """*value* as a tracked container sharing *root* (itself if None); its items as they are.

    Only this level is copied: nested containers are wrapped by ``_lazy`` when handed out.
    """
    if isinstance(value, dict):
        tracked_dict = TrackedDict()
        dict.update(tracked_dict, value)  # C copy; a TrackedDict source is not re-wrapped
        tracked_dict._root = tracked_dict if root is None else root
        return tracked_dict
    if isinstance(value, list | tuple):
        tracked_list = TrackedList(list.copy(value) if isinstance(value, list) else value)
        tracked_list._root = tracked_list if root is None else root
        return tracked_list
    return value


def _lazy(value: Any, root: _Tracked) -> Any:
    """*value*, about to be handed out of a container of *root*, wrapped if it is not yet."""
    if isinstance(value, _Tracked):
        # a tracked container of another root (copied in by _wrap) must not report there
        return value if value._root is root else _wrap(value, root)
    if isinstance(value, dict | list | tuple):
        return _wrap(value, root)
    return value


class TrackedDict(_Tracked, dict[Any, Any]):
    """A dict that reports in-place changes (its own and nested) to its ORM attribute."""

    def __getitem__(self, key: Any) -> Any:
        value = dict.__getitem__(self, key)
        wrapped = _lazy(value, self._root)
        if wrapped is not value:
            dict.__setitem__(self, key, wrapped)  # wrapped once; not a change
        return wrapped

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default  # noqa: SIM401 (this is .get)

    def _wrap_all(self) -> None:
        root = self._root
        for key, value in list(dict.items(self)):
            wrapped = _lazy(value, root)
            if wrapped is not value:
                dict.__setitem__(self, key, wrapped)

    def values(self) -> Any:
        self._wrap_all()
        return dict.values(self)

    def items(self) -> Any:
        self._wrap_all()
        return dict.items(self)

    def __setitem__(self, key: Any, value: Any) -> None:
        dict.__setitem__(self, key, _wrap(value, self._root))
        self.changed()

    def __delitem__(self, key: Any) -> None:
        dict.__delitem__(self, key)
        self.changed()

    def __ior__(self, other: Any) -> TrackedDict:  # type: ignore[misc]
        self.update(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            dict.__setitem__(self, key, _wrap(value, self._root))
        self.changed()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def pop(self, *args: Any) -> Any:
        result = dict.pop(self, *args)
        self.changed()
        return result

    def popitem(self) -> tuple[Any, Any]:
        result = dict.popitem(self)
        self.changed()
        return result

    def clear(self) -> None:
        dict.clear(self)
        self.changed()


class TrackedList(_Tracked, list[Any]):
    """A list that reports in-place changes (its own and nested) to its ORM attribute."""

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            self._wrap_all()
            return list.__getitem__(self, index)
        value = list.__getitem__(self, index)
        wrapped = _lazy(value, self._root)
        if wrapped is not value:
            list.__setitem__(self, index, wrapped)  # wrapped once; not a change
        return wrapped

    def _wrap_all(self) -> None:
        root = self._root
        for index, value in enumerate(list.copy(self)):
            wrapped = _lazy(value, root)
            if wrapped is not value:
                list.__setitem__(self, index, wrapped)

    def __iter__(self) -> Any:
        self._wrap_all()
        return list.__iter__(self)

    def __reversed__(self) -> Any:
        self._wrap_all()
        return list.__reversed__(self)

    def __setitem__(self, index: Any, value: Any) -> None:
        wrapped = (
            [_wrap(v, self._root) for v in value]
            if isinstance(index, slice)
            else (_wrap(value, self._root))
        )
        list.__setitem__(self, index, wrapped)
        self.changed()

    def __delitem__(self, index: Any) -> None:
        list.__delitem__(self, index)
        self.changed()

    def __iadd__(self, other: Any) -> TrackedList:  # type: ignore[misc]
        self.extend(other)
        return self

    def __imul__(self, count: SupportsIndex) -> TrackedList:
        list.__imul__(self, count)
        self.changed()
        return self

    def append(self, value: Any) -> None:
        list.append(self, _wrap(value, self._root))
        self.changed()

    def extend(self, values: Any) -> None:
        list.extend(self, [_wrap(v, self._root) for v in values])
        self.changed()

    def insert(self, index: SupportsIndex, value: Any) -> None:
        list.insert(self, index, _wrap(value, self._root))
        self.changed()

    def pop(self, index: SupportsIndex = -1) -> Any:
        result = list.pop(self, index)
        self.changed()
        return result

    def remove(self, value: Any) -> None:
        list.remove(self, value)
        self.changed()

    def clear(self) -> None:
        list.clear(self)
        self.changed()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        list.sort(self, *args, **kwargs)
        self.changed()

    def reverse(self) -> None:
        list.reverse(self)
        self.changed()


def track(value: Any, state: InstanceState[Any], key: str) -> Any:
    """*value* wrapped (if it is not already) and registered as *state*'s attribute *key*."""
    if not isinstance(value, _Tracked):
        value = _wrap(value, None)
        if not isinstance(value, _Tracked):
            return value  # a scalar JSON document: nothing to mutate in place
    root = value._root
    if root._owners is None:
        root._owners = weakref.WeakKeyDictionary()
    root._owners[state] = key
    return value


def _install(mapper: Mapper[Any], key: str, type_: PortableType[Any]) -> None:
    attribute = getattr(mapper.class_, key)
    coerce_set = type_.coerce_set

    if not type_.mutable:

        def check(target: Any, value: Any, oldvalue: Any, initiator: Any) -> Any:
            return coerce_set(value)

        event.listen(attribute, "set", check, retval=True, propagate=True)
        return

    def set_(state: InstanceState[Any], value: Any, oldvalue: Any, initiator: Any) -> Any:
        if value is oldvalue or value is None:
            return value
        return track(coerce_set(value), state, key)

    def load(state: InstanceState[Any], *args: Any) -> None:
        value = state.dict.get(key)
        if value is not None:
            state.dict[key] = track(value, state, key)

    def load_attrs(state: InstanceState[Any], context: Any, attrs: Any) -> None:
        if not attrs or key in attrs:
            load(state)

    # propagate: subclasses (mapped or not) share the listeners of the class that
    # declares the column; _on_mapper_configured installs them once, there.
    event.listen(attribute, "set", set_, raw=True, retval=True, propagate=True)
    for name, listener in (("load", load), ("refresh", load_attrs), ("refresh_flush", load_attrs)):
        event.listen(mapper.class_, name, listener, raw=True, propagate=True)


_installed: set[tuple[type, str]] = set()


@event.listens_for(Mapper, "mapper_configured")
def _on_mapper_configured(mapper: Mapper[Any], class_: type) -> None:
    for prop in mapper.column_attrs:
        type_ = prop.columns[0].type
        if not isinstance(type_, PortableType):
            continue
        if any((base, prop.key) in _installed for base in class_.__mro__):
            continue  # inherited: the listeners propagate from the base class
        _installed.add((class_, prop.key))
        _install(mapper, prop.key, type_)
