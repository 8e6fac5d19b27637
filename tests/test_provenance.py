"""The source digest of a run and the commit it is found in (ssmax_jax.reproduce.provenance)."""
import importlib.metadata
import os
import shutil
import subprocess

import pytest

from ssmax_jax.reproduce import provenance

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _write(root, rel, text):
  path = os.path.join(root, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)


def _commit(root, message):
  env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
             GIT_COMMITTER_EMAIL="t@t")
  subprocess.run(["git", "-C", root, "add", "-A"], check=True, env=env)
  subprocess.run(["git", "-C", root, "commit", "-q", "-m", message], check=True, env=env)
  return subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], check=True, env=env,
                        capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
  root = str(tmp_path)
  subprocess.run(["git", "init", "-q", root], check=True)
  _write(root, "ssmax_jax/__init__.py", "")
  _write(root, "ssmax_jax/ops/op.py", "x = 1\n")
  _write(root, "configs/tiny.py", "c = 1\n")
  return root


def test_digest_names_the_sources_only(repo):
  d = provenance.source_digest(repo)
  _write(repo, "docs/notes.md", "text")
  _write(repo, "configs/sub/helper.py", "not a config file")  # only configs/*.py count
  _write(repo, "ssmax_jax/data.txt", "not python")
  assert provenance.source_digest(repo) == d
  _write(repo, "ssmax_jax/ops/op.py", "x = 2\n")
  assert provenance.source_digest(repo) != d
  _write(repo, "ssmax_jax/ops/op.py", "x = 1\n")
  os.rename(os.path.join(repo, "configs/tiny.py"), os.path.join(repo, "configs/small.py"))
  assert provenance.source_digest(repo) != d  # paths are part of the digest


def test_commit_with_digest_finds_the_commit_that_introduced_the_sources(repo):
  first = _commit(repo, "first")
  d1 = provenance.source_digest(repo)
  _write(repo, "ssmax_jax/ops/op.py", "x = 2\n")
  d2 = provenance.source_digest(repo)
  second = _commit(repo, "second")
  _write(repo, "docs/notes.md", "results")  # a later commit with the same sources
  third = _commit(repo, "docs")
  assert provenance.commit_with_digest(d2, repo) == second
  assert provenance.commit_with_digest(d1, repo) == first
  assert provenance.commit_with_digest("0" * 16, repo) is None
  assert provenance.git_state(repo) == (third, False)
  _write(repo, "ssmax_jax/ops/op.py", "x = 3\n")
  assert provenance.git_state(repo) == (third, True)


def test_without_git(tmp_path):
  _write(str(tmp_path), "ssmax_jax/a.py", "")
  assert provenance.commit_with_digest(provenance.source_digest(str(tmp_path)),
                                       str(tmp_path)) is None
  assert provenance.git_state(str(tmp_path)) == (None, None)


def test_root_is_the_repository():
  assert provenance.ROOT == os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_installed_package_inside_another_checkout_has_no_commit(repo):
  _commit(repo, "first")
  site = os.path.join(repo, ".venv", "lib", "site-packages")  # a venv inside some checkout
  _write(site, "ssmax_jax/a.py", "")
  assert provenance.git_state(site) == (None, None)


def test_package_version_names_the_installed_distribution():
  assert provenance.package_version() == importlib.metadata.version("ssmax-jax")
