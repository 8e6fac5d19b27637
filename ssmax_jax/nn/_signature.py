"""Constructor signatures for NNX modules.

nnx.Module's metaclass defines `__call__(cls, *args, **kwargs)`, and `inspect.signature(cls)`
(so help() and IDEs) reports a metaclass `__call__` before `__init__`: every module would show
`(*args, **kwargs)`. A `__signature__` on the class is read first; this one is computed from
the `__init__` of the class it is read on, so subclasses show their own arguments.
"""
import inspect


class _InitSignature:
  """`cls.__signature__`: cls.__init__'s signature without self; None on instances (whose
  signature is their `__call__`'s)."""

  def __get__(self, instance, owner):
    if instance is not None:
      return None
    sig = inspect.signature(owner.__init__)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def init_signature(cls):
  """Class decorator: `inspect.signature(cls)` and help(cls) show `cls.__init__`'s arguments."""
  cls.__signature__ = _InitSignature()
  return cls
