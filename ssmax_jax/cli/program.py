"""What every command shares: --help that prints the command's usage and exits 0, and flag
errors (a bad value, an unknown --config.KEY) as one line that says the fix."""
import sys

from absl import app
from absl import flags

_SHORT_HELP = ("--help", "-h", "-?", "--helpshort")


def config_key_error(error: Exception, argv=()) -> str:
  """One line for ml_collections' error on an unknown --config.KEY: its text is the last part
  of the key in quotes, then maybe a line 'Did you mean ...?'; argv gives the whole key."""
  while error.args and isinstance(error.args[0], Exception):  # AttributeError(KeyError(...))
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  key, _, hint = text.partition("\n")
  key = key.strip().strip("'\"")
  given = [a[2:].split("=")[0] for a in argv if a.startswith("--config.")]
  key = next((g for g in given if g.split(".")[-1] == key), key)
  hint = f"; {hint.strip()}" if hint.strip() else ""
  return f"error: unknown config key '{key}'{hint} (--print_config lists every key)"


def _usage(doc: str, module: str, full: bool):
  print(doc.strip() + "\n")
  print(flags.FLAGS.get_help() if full else flags.FLAGS.module_help(module))
  if not full:
    print("\n--helpfull lists the flags of every library.")
  sys.exit(0)


def run(main, doc: str, module: str, rewrite=None):
  """app.run(main) for the command defined in `module` (its __name__) with usage `doc`;
  rewrite: argv -> argv before parsing (e.g. --config=NAME to the shipped file's path)."""
  def parse(argv):
    argv = rewrite(argv) if rewrite else argv
    asked = [a for a in argv[1:] if a in (*_SHORT_HELP, "--helpfull")]
    if asked:
      _usage(doc, module, full=asked[0] == "--helpfull")
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      sys.exit(f"error: {e}")
    except (AttributeError, KeyError) as e:  # ml_collections' answer to an unknown --config.key
      sys.exit(config_key_error(e, argv))
  app.run(main, flags_parser=parse)
