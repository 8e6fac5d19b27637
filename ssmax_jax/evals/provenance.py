"""Moved to ssmax_jax.reproduce.provenance; this path stays for one release."""
# pylint: disable=unused-import
from ssmax_jax.reproduce.provenance import ROOT, commit_with_digest, git_state, source_digest
