"""
Poor man's configurator, nanoGPT-style, with errors instead of surprises.

Every stage script keeps its hyperparameters as plain globals at the top of the file, then calls

    from configurator import configure
    config = configure(globals())          # reads sys.argv[1:]

which lets you override them from the command line:

    python grpo.py config/grpo_runcpu.py --learning_rate=1e-6 --group_size=6

Arguments without `--` are config files: Python files that assign some of the globals. Arguments
`--key=value` override one global; the value is parsed with ast.literal_eval, and if that fails it is
taken as a plain string (so `--out_dir=out/run1` works without quotes).

Why not exec() like nanoGPT: we want a clear error for the two mistakes people actually make,
a misspelt key and a wrong type (`--batch_size=8.5`), naming the key and where it came from.
Type rules: the new value must have the type of the default; an int is accepted for a float
default; a default of None accepts anything (used for optional paths/URLs).
"""
import ast
import os
import sys


class ConfigError(ValueError):
    pass


def config_keys(g):
    """THE list of a file's config keys (sorted): its globals that are hyperparameters, i.e. plain values, not
    modules/functions/classes/private names/UPPER_CASE constants (config keys are lower case). Every stage uses
    this for its config dumps and defaults."""
    return sorted(k for k, v in g.items()
                  if not k.startswith("_") and not k.isupper() and isinstance(v, (int, float, bool, str, list, tuple, dict, type(None))))


def _check_and_set(g, keys, key, value, where):
    if key not in keys:
        raise ConfigError(("" if where == "command line" else f"{where}: ") + f"unknown config key '{key}'")
    default = g[key]
    if default is not None:
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(default, bool) and isinstance(value, bool)
        elif isinstance(default, float) and isinstance(value, int):
            value, ok = float(value), True
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, (list, tuple))
            if ok:
                value = type(default)(value)
        else:
            ok = type(value) is type(default)
        if not ok:
            raise ConfigError(f"config key '{key}' ({where}) expects {type(default).__name__} "
                              f"(default {default!r}), got {type(value).__name__} {value!r}")
    g[key] = value


def configure(g, argv=None):
    """Apply config files and --key=value overrides (argv defaults to sys.argv[1:]) to the dict g
    (a script's globals()). Returns the resulting {key: value} of all configurable globals.
    From the command line (argv None) a bad key/value/file prints ONE line, "sft.py: unknown config key
    'bogus'", and exits with status 2 (no traceback); with an explicit argv it raises ConfigError."""
    if argv is not None:
        return _configure(g, list(argv))
    try:
        return _configure(g, sys.argv[1:])
    except ConfigError as e:
        script = os.path.basename(g.get("__file__") or sys.argv[0] or "config")
        print(f"{script}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _configure(g, argv):
    keys = set(config_keys(g))
    for arg in argv:
        if not arg.startswith("--"):
            try:
                src = open(arg).read()
            except OSError as e:
                raise ConfigError(f"cannot read config file '{arg}': {e}") from None
            scope = {"__file__": os.path.abspath(arg)}  # lets a config file read a sibling's values
            try:
                exec(compile(src, arg, "exec"), scope)
            except Exception as e:  # a syntax or runtime error inside the config file
                raise ConfigError(f"config file '{arg}' failed: {type(e).__name__}: {e}") from None
            for k, v in scope.items():
                if k.startswith("_") or type(v).__name__ in ("module", "function"):
                    continue
                _check_and_set(g, keys, k, v, f"config file '{arg}'")
        else:
            if "=" not in arg:
                raise ConfigError(f"argument '{arg}' must look like --key=value")
            key, val = arg[2:].split("=", 1)
            try:
                value = ast.literal_eval(val)
            except (ValueError, SyntaxError):
                value = val  # a bare string
            if isinstance(g.get(key), str) and not isinstance(value, str):
                value = val  # e.g. --run_name=123 for a string key stays the string "123"
            _check_and_set(g, keys, key, value, "command line")
    return {k: g[k] for k in sorted(keys)}
