"""A `bytes` subclass whose instances the cyclic garbage collector does not track.

Why: a replica holds one `Register` per key, millions of them.  CPython (3.11 and later) gives
every class written in Python the GC flag, so each instance carries a 16-byte collector header
and sits in the collector's lists, although a `bytes` holds no references and can never be
part of a cycle.  At 1,000,000 keys of 100-byte values that header moves each register from
pymalloc's 160-byte size class to the 176-byte one: 16 MB of a replica's ~420 MB, and every
full collection walks them.

How: `without_gc(cls)` makes a twin of `cls` through the stable C API `PyType_FromSpecWithBases`
with the same bases and no `Py_TPFLAGS_HAVE_GC` (what a C extension type does), then copies the
class body (methods, properties, class attributes) onto it.  Instances are then allocated with
`PyObject_Malloc`, untracked, and freed by `subtype_dealloc`'s non-GC branch.  Conditions:
`cls` derives only from `bytes` (no reference-holding base), has `__slots__ = ()` (no
`__dict__`, nothing to traverse) and does not use zero-argument `super()` (its `__class__`
cell would name the original class).  Where this is not possible (not CPython, no
`ctypes.pythonapi`) or the twin does not behave (checked once on a sample), `cls` is returned
unchanged: the same behaviour, 16 bytes more per instance.
"""

from __future__ import annotations

import ctypes
import gc
import platform
import sys
from typing import Any, TypeVar, cast

__all__ = ["without_gc"]

B = TypeVar("B", bound=bytes)
_TPFLAGS_BASETYPE = 1 << 10
_TPFLAGS_HAVE_VERSION_TAG = 1 << 18  # Py_TPFLAGS_DEFAULT
_SKIP = frozenset({"__dict__", "__weakref__", "__module__", "__qualname__", "__slots__"})


class _Slot(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_int), ("pfunc", ctypes.c_void_p)]


class _Spec(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("basicsize", ctypes.c_int),
        ("itemsize", ctypes.c_int),
        ("flags", ctypes.c_uint),
        ("slots", ctypes.POINTER(_Slot)),
    ]


_keep: list[object] = []  # the specs' buffers, alive as long as the types (3.11 may point at them)


def _twin(cls: type[B]) -> type[B]:
    name = f"{cls.__module__}.{cls.__qualname__}".encode()
    slots = (_Slot * 1)()  # only the terminator: every slot is inherited or set below
    spec = _Spec(name, 0, 0, _TPFLAGS_HAVE_VERSION_TAG | _TPFLAGS_BASETYPE, slots)
    _keep.extend((name, slots, spec))
    from_spec = ctypes.pythonapi.PyType_FromSpecWithBases
    from_spec.restype = ctypes.py_object
    from_spec.argtypes = [ctypes.POINTER(_Spec), ctypes.py_object]
    twin = cast("type[B]", from_spec(ctypes.byref(spec), cls.__bases__))
    for attr, value in cls.__dict__.items():
        if attr not in _SKIP:
            setattr(twin, attr, value)
    return twin


def without_gc(cls: type[B], sample: tuple[Any, ...]) -> type[B]:
    """An untracked twin of the `bytes` subclass `cls` (see the module docstring), or `cls`.

    `sample` are constructor arguments: the twin is used only if an instance made from them
    equals the original's bytes, is untracked and is smaller."""
    if (
        platform.python_implementation() != "CPython"
        or cls.__bases__ != (bytes,)
        or cls.__dict__.get("__slots__") != ()
        or not hasattr(ctypes, "pythonapi")
    ):
        return cls
    try:
        twin = _twin(cls)
        a, b = cls(*sample), twin(*sample)
    except (AttributeError, OSError, TypeError, ValueError):
        return cls
    if (
        type(b) is not twin
        or bytes(a) != bytes(b)
        or gc.is_tracked(b)
        or sys.getsizeof(b) >= sys.getsizeof(a)
    ):
        return cls
    return twin
