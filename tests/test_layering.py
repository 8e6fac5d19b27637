"""The library's layers import only downward (docs/architecture.md), checked on the source."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A package may import its own layer and those below; data imports nothing of ours. The shipped
# configs build on train's defaults; the command-line programs (cli) import everything.
RANK = {"ops": 0, "nn": 1, "models": 2, "train": 3, "evals": 4, "reproduce": 5, "configs": 6,
        "cli": 7}
# Re-export shims of moved modules, kept for one release (CHANGELOG.md).
SHIMS = {"evals/recipe.py", "evals/results.py", "evals/provenance.py"}


def _imports(path):
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      yield node.module


def _violations(root=ROOT):
  for path in sorted((root / "ssmax_jax").rglob("*.py")):
    rel = path.relative_to(root / "ssmax_jax").as_posix()
    layer = rel.split("/")[0] if "/" in rel else None
    layer = "ops" if layer == "kernels" else layer
    for name in _imports(path):
      top = name.split(".")[0]
      if top in ("experiments", "benchmarks", "configs"):
        yield f"{rel} imports {name}"
      if top != "ssmax_jax" or layer is None or rel in SHIMS:
        continue
      parts = name.split(".")
      target = parts[1] if len(parts) > 1 else None
      target = "ops" if target == "kernels" else target
      if layer == "data" and target not in (None, "data"):
        yield f"{rel} imports {name} (data imports nothing of ours)"
      elif layer in RANK and RANK.get(target, -1) > RANK[layer]:
        yield f"{rel} imports {name}, a layer above {layer}"


def test_layers_import_only_downward():
  assert list(_violations()) == []


@pytest.mark.parametrize("layer, source, found", [
    ("ops", "from ssmax_jax.train import trainer\nimport benchmarks.timing\n",
     ["ops/bad.py imports ssmax_jax.train, a layer above ops",
      "ops/bad.py imports benchmarks.timing"]),
    ("configs", "from ssmax_jax.cli import train\nfrom configs import tiny\n",  # commands on top
     ["configs/bad.py imports ssmax_jax.cli, a layer above configs",
      "configs/bad.py imports configs"]),
])
def test_the_check_sees_an_upward_import(tmp_path, layer, source, found):
  lib = tmp_path / "ssmax_jax" / layer
  lib.mkdir(parents=True)
  (lib / "bad.py").write_text(source)
  assert list(_violations(tmp_path)) == found
