"""The backend choice every op shares (ssmax_jax/ops/_dispatch.py)."""
import types

import pytest

from ssmax_jax.ops import _dispatch


def _backend(reason):
  return types.SimpleNamespace(unsupported_reason=lambda **call: reason(call))


BACKENDS = {
    "fast": _backend(lambda call: None if call["n"] % 2 == 0 else "odd n"),
    "slow": _backend(lambda call: None),
    "picky": _backend(lambda call: "never"),
}


@pytest.mark.parametrize("implementation", [None, "auto"])
def test_choose_walks_the_order(implementation):
  order = ("picky", "fast", "slow")
  assert _dispatch.choose("op", implementation, BACKENDS, order, n=2) == "fast"
  assert _dispatch.choose("op", implementation, BACKENDS, order, n=3) == "slow"


def test_explicit_backend_runs_or_says_why():
  assert _dispatch.choose("op", "fast", BACKENDS, ("slow",), n=2) == "fast"
  with pytest.raises(ValueError, match=r"implementation='fast' cannot take .*odd n"):
    _dispatch.choose("op", "fast", BACKENDS, ("slow",), n=3)


def test_group_tries_members_in_order():
  groups = {"ours": ("picky", "fast")}
  assert _dispatch.choose("op", "ours", BACKENDS, ("slow",), groups, n=2) == "fast"
  with pytest.raises(ValueError, match=r"picky: never; fast: odd n"):
    _dispatch.choose("op", "ours", BACKENDS, ("slow",), groups, n=3)


def test_a_group_empty_on_the_platform_says_so(monkeypatch):
  monkeypatch.setattr(_dispatch, "platform", lambda: "tpu")
  with pytest.raises(ValueError, match=r"implementation='ours' has no backend on tpu"):
    _dispatch.choose("op", "ours", BACKENDS, ("slow",), {"ours": ()}, n=2)


def test_unknown_name_lists_the_choices():
  with pytest.raises(ValueError, match=r"implementation='nope' is unknown; choose None"):
    _dispatch.choose("op", "nope", BACKENDS, ("slow",), n=2)


def test_nothing_fits_in_the_default_order():
  with pytest.raises(ValueError, match=r"no op backend takes this call"):
    _dispatch.choose("op", None, BACKENDS, ("picky",), n=2)


def test_skips_apply_only_when_choosing():
  backends = dict(BACKENDS, shy=types.SimpleNamespace(unsupported_reason=lambda **call: None,
                                                      auto_skip_reason=lambda **call: "shy"))
  assert _dispatch.choose("op", None, backends, ("shy", "slow"), n=2) == "slow"
  assert _dispatch.choose("op", "shy", backends, ("slow",), n=2) == "shy"
  with pytest.raises(ValueError, match=r"no op backend takes this call .*shy: shy"):
    _dispatch.choose("op", None, backends, ("shy",), n=2)


def test_names_limit_what_a_caller_may_pass():
  names = ("slow", "ours")
  groups = {"ours": ("picky", "fast")}
  assert _dispatch.choose("op", "ours", BACKENDS, ("slow",), groups, names, n=2) == "fast"
  with pytest.raises(ValueError, match=r"implementation='fast' is unknown; .*'slow', 'ours'"):
    _dispatch.choose("op", "fast", BACKENDS, ("slow",), groups, names, n=2)
