"""
Poor man's configurator, nanoGPT-style, with errors instead of surprises.

Every stage script keeps its hyperparameters as plain globals at the top of the file, then calls

    from configurator import configure
    config = configure(globals())          # reads sys.argv[1:]

which lets you override them from the command line:

    python grpo.py config/grpo_cpu.py --learning_rate=1e-6 --group_size=6

Arguments without `--` are config files: Python files that assign some of the globals. Arguments
`--key=value` override one global; the value is parsed with ast.literal_eval, and if that fails it is
taken as a plain string (so `--out_dir=out/run1` works without quotes).

Why not exec() like nanoGPT: we want a clear error for the two mistakes people actually make,
a misspelt key and a wrong type (`--batch_size=8.5`), naming the key and where it came from.
Type rules: the new value must have the type of the default; an int is accepted for a float
default; a default of None accepts anything (used for optional paths/URLs).
"""
import ast
import sys


class ConfigError(ValueError):
    pass


def _configurable(g):
    # globals that are hyperparameters: plain values, not modules/functions/classes/private names
    return {k for k, v in g.items()
            if not k.startswith("_") and isinstance(v, (int, float, bool, str, list, tuple, dict, type(None)))}


def _check_and_set(g, keys, key, value, where):
    if key not in keys:
        raise ConfigError(f"{where}: unknown config key '{key}'")
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
            raise ConfigError(f"{where}: config key '{key}' expects {type(default).__name__} "
                              f"(default {default!r}), got {type(value).__name__} {value!r}")
    g[key] = value


def configure(g, argv=None):
    """Apply config files and --key=value overrides (argv defaults to sys.argv[1:]) to the dict g
    (a script's globals()). Returns the resulting {key: value} of all configurable globals."""
    argv = sys.argv[1:] if argv is None else list(argv)
    keys = _configurable(g)
    for arg in argv:
        if not arg.startswith("--"):
            try:
                src = open(arg).read()
            except OSError as e:
                raise ConfigError(f"cannot read config file '{arg}': {e}") from None
            scope = {}
            try:
                exec(compile(src, arg, "exec"), scope)
            except Exception as e:  # a syntax or runtime error inside the config file
                raise ConfigError(f"config file '{arg}' failed: {type(e).__name__}: {e}") from None
            for k, v in scope.items():
                if k.startswith("_") or k == "__builtins__" or type(v).__name__ in ("module", "function"):
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
            _check_and_set(g, keys, key, value, f"command line '--{key}'")
    return {k: g[k] for k in sorted(keys)}


def config_keys(g):
    """The configurable keys of a script's globals g, sorted: the one list every stage logs / checks."""
    return sorted(_configurable(g))
