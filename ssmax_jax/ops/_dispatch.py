"""Backend choice shared by every op: one spelling of "choose for me", one order, one error.

An op lists its backends in the order it prefers them on each platform. Each backend is a
module (or any object) with `unsupported_reason(**call) -> str | None`, saying why it cannot
take a call (None when it can), and optionally `auto_skip_reason(**call) -> str | None`, why
choosing for the caller passes it over although it could take the call (e.g. a precision
another backend serves better). `choose` walks that order; no backend ever calls another.

- `implementation=None` (or its alias `'auto'`, kept so that saved configs load): the first
  backend of the platform's order that takes the call and does not skip it.
- A backend's own name: that backend, or a ValueError with its reason.
- A group name (e.g. `'pallas'`: our kernels on the platform): the first member that takes the
  call, or a ValueError with every member's reason (or saying the group is empty there).
"""
from collections.abc import Mapping, Sequence

import jax

AUTO = "auto"


def normalize(op: str, implementation, names: Sequence[str]):
  """None for "choose" (None or 'auto'), else `implementation` if it is one of `names`."""
  if implementation is None or implementation == AUTO:
    return None
  if implementation not in names:
    raise ValueError(f"{op} implementation={implementation!r} is unknown; choose None (the "
                     f"fastest that fits) or one of {', '.join(map(repr, names))}.")
  return implementation


def platform() -> str:
  """'cpu', 'gpu' or 'tpu': where the computation being traced runs."""
  return jax.default_backend()


def choose(op: str, implementation, backends: Mapping[str, object], order: Sequence[str],
           groups: Mapping[str, Sequence[str]] | None = None, names: Sequence[str] | None = None,
           **call) -> str:
  """The name of the backend that runs `call`.

  backends: name -> backend (with `unsupported_reason(**call)`); order: the names tried, best
  first, when implementation is None; groups: group name -> member names, tried in order;
  names: those a caller may pass (default: every backend and group).
  """
  groups = dict(groups or {})
  implementation = normalize(op, implementation, names or (*backends, *groups))
  if implementation is None:
    candidates, explicit = order, False
  else:
    candidates, explicit = groups.get(implementation, (implementation,)), True
    if not candidates:  # a group with no member here, e.g. GPU kernels on a TPU
      raise ValueError(f"{op} implementation={implementation!r} has no backend on {platform()}: "
                       "none of its kernels runs there; pass implementation=None to choose one "
                       "that can.")
  reasons = {}
  for name in candidates:
    backend = backends[name]
    reason = backend.unsupported_reason(**call)
    if reason is None and not explicit and hasattr(backend, "auto_skip_reason"):
      reason = backend.auto_skip_reason(**call)
    if reason is None:
      return name
    reasons[name] = reason
  why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
  if explicit:
    raise ValueError(f"{op} implementation={implementation!r} cannot take this call ({why}); "
                     "pass implementation=None to choose one that can.")
  raise ValueError(f"no {op} backend takes this call on {platform()} ({why}).")


# The row-wise ops (rms_norm, rope, cross_entropy): a reference and one Triton kernel each; the
# kernel is theirs on a GPU where it fits, 'pallas' interprets it on CPU, and TPU has none.
ROW_OP_IMPLEMENTATIONS = ("xla", "pallas")
_ROW_OP_PALLAS = {"gpu": ("triton",), "cpu": ("triton",), "tpu": ()}
_ROW_OP_ORDER = {"gpu": ("triton", "xla"), "cpu": ("xla",), "tpu": ("xla",)}


def choose_triton_or_xla(op: str, implementation, reference, triton, **call) -> str:
  """'triton' or 'xla' for a row-wise op's `call`: `choose` over its two backend modules."""
  where = platform()
  return choose(op, implementation, {"xla": reference, "triton": triton},
                _ROW_OP_ORDER.get(where, _ROW_OP_ORDER["cpu"]),
                {"pallas": _ROW_OP_PALLAS.get(where, _ROW_OP_PALLAS["cpu"])},
                ROW_OP_IMPLEMENTATIONS, platform=where, **call)
