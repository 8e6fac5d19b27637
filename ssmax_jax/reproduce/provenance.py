"""Which code produced a result: a digest of the library's and configs' sources, and the commit of
a git history whose sources have that digest.

A copy of the repository made for a remote machine can carry a working tree newer than its .git
(the project's device machine does), so a summary's `git_commit` may name an older commit than
the code that ran. `source_digest` hashes the sources themselves; `commit_with_digest` finds the
commit they came from afterwards, where the full history is at hand. An installed package
(site-packages, no checkout) has no commit: `package_version` names the release instead.
"""
import glob
import hashlib
import importlib.metadata
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _is_source(path: str) -> bool:
  """ssmax_jax/**/*.py and configs/*.py, relative to the repository root."""
  parts = path.split("/")
  if not path.endswith(".py") or any(p.startswith(".") for p in parts):
    return False
  return parts[0] == "ssmax_jax" or (parts[0] == "configs" and len(parts) == 2)


def _digest(files) -> str:
  """files: (relative path, bytes) pairs."""
  h = hashlib.sha256()
  for path, data in sorted(files):
    h.update(path.encode() + b"\0" + data)
  return h.hexdigest()[:16]


def source_digest(root: str = ROOT) -> str:
  """16 hex digits over the sources in the working tree at root."""
  paths = (glob.glob(os.path.join(root, "ssmax_jax", "**", "*.py"), recursive=True)
           + glob.glob(os.path.join(root, "configs", "*.py")))
  files = []
  for path in paths:
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    if _is_source(rel):
      with open(path, "rb") as f:
        files.append((rel, f.read()))
  return _digest(files)


def _git(root, *args, stdin=None) -> bytes:
  return subprocess.run(["git", "-C", root, *args], input=stdin, capture_output=True,
                        timeout=60, check=True).stdout


def package_version() -> str | None:
  """The installed distribution's version (a wheel or an editable checkout), None if neither."""
  try:
    return importlib.metadata.version("ssmax-jax")
  except importlib.metadata.PackageNotFoundError:
    return None


def git_state(root: str = ROOT) -> tuple[str | None, bool | None]:
  """(HEAD commit, whether the sources differ from it), or (None, None) unless root is the top of
  a git checkout (site-packages inside some other repository's tree is no checkout of ours)."""
  try:
    top = _git(root, "rev-parse", "--show-toplevel").decode().strip()
    if os.path.realpath(top) != os.path.realpath(root):
      return None, None
    commit = _git(root, "rev-parse", "HEAD").decode().strip() or None
    dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no", "--", "ssmax_jax",
                      "configs").strip())
  except (OSError, subprocess.SubprocessError):
    return None, None
  return commit, dirty


def commit_with_digest(digest: str, root: str = ROOT, max_commits: int = 2000) -> str | None:
  """The commit that introduced the sources hashing to `digest`: walking from HEAD back along
  first parents (the main line), the oldest of the newest run of consecutive commits with those
  sources. None if none of the last max_commits has them, or if root is no git checkout."""
  try:
    commits = _git(root, "rev-list", "--first-parent", f"--max-count={max_commits}",
                   "HEAD").decode().split()
    blobs = {}  # blob id -> contents, read once for all commits
    found = None
    for commit in commits:
      tree = []
      for line in _git(root, "ls-tree", "-r", commit, "--", "ssmax_jax", "configs").splitlines():
        meta, path = line.decode().split("\t", 1)
        if _is_source(path) and meta.split()[1] == "blob":
          tree.append((path, meta.split()[2]))
      missing = sorted({b for _, b in tree} - blobs.keys())
      if missing:
        out = _git(root, "cat-file", "--batch", stdin="".join(f"{b}\n" for b in missing).encode())
        for b in missing:  # "<id> blob <size>\n<contents>\n" per blob, in the order asked
          header, out = out.split(b"\n", 1)
          size = int(header.split()[2])
          blobs[b], out = out[:size], out[size + 1:]
      if _digest((path, blobs[b]) for path, b in tree) == digest:
        found = commit
      elif found:
        break
  except (OSError, subprocess.SubprocessError, ValueError, IndexError):
    return None
  return found
