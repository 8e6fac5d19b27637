"""The documentation: the site builds without warnings, and README's Python examples run."""
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_python_blocks():
  text = (ROOT / "README.md").read_text()
  return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_mkdocs_builds_without_warnings(tmp_path):
  missing = [m for m in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python")
             if importlib.util.find_spec(m.split(".")[0]) is None
             or importlib.util.find_spec(m) is None]
  if missing:
    pytest.skip(f"{', '.join(missing)} not installed: the docs build needs mkdocs and "
                "mkdocstrings[python] (the test extra).")
  # --strict turns every warning (broken link, docstring the handler cannot parse) into a
  # failure; griffe reads the source statically, so nothing is imported or compiled.
  proc = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  log = proc.stdout + proc.stderr
  warnings = [line for line in log.splitlines() if line.startswith(("WARNING", "ERROR"))]
  assert proc.returncode == 0 and not warnings, log
  assert (tmp_path / "site" / "api" / "op" / "index.html").is_file()


def test_readme_has_the_op_and_decoding_examples():
  blocks = _readme_python_blocks()
  assert len(blocks) >= 2
  assert any("dot_product_attention" in b for b in blocks)
  assert any("generate(" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(_readme_python_blocks())))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
  block = _readme_python_blocks()[index]
  monkeypatch.chdir(tmp_path)  # the tokenizer recipe reads corpus/*.txt and writes a folder
  (tmp_path / "corpus").mkdir()
  for name in ("a.txt", "b.txt"):
    (tmp_path / "corpus" / name).write_text("To be, or not to be, that is the question.\n" * 50)
  namespace = {}
  exec(compile(block, f"README.md python block {index}", "exec"), namespace)
  if "tokens" in namespace and "generate(" in block:  # the decoding example
    prompt, tokens = namespace["prompt"], namespace["tokens"]
    assert tokens.shape == (prompt.shape[0], prompt.shape[1] + 16)
    assert (tokens[:, :prompt.shape[1]] == prompt).all()


def test_citation_file_parses_and_matches_the_package():
  yaml = pytest.importorskip("yaml")
  import tomllib
  cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
  assert str(cff["version"]) == project["version"] and cff["license"] == project["license"]
  import ssmax_jax
  assert ssmax_jax.__version__ == project["version"]  # one version, everywhere it is written
  paper = cff["preferred-citation"]
  assert paper["title"] == "Scalable-Softmax Is Superior for Attention"
  assert {"type": "other", "value": "arXiv:2501.19399"}.items() <= paper["identifiers"][0].items()
