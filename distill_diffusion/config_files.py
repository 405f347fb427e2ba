"""Config files: the YAML configs shipped in ``distill_diffusion/configs``, loaded by name or by path.

A config is data: ``method_name`` (the method it trains) and the sections :mod:`distill_diffusion.config`
builds and validates (docs/training.md). Every shipped config names its method, so ``train ladd --config
tiny/add`` is refused before anything is written; a user's own file may leave the name out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from distill_diffusion.errors import UserError, require

#: Configs shipped with the package (package data), loadable by name: ``--config tiny/lcm_lora``.
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"


def config_names() -> list[str]:
    """Names of the configs shipped in ``distill_diffusion/configs`` (``lcm_lora_sd15``, ``tiny/lcm_lora``, ...)."""
    return sorted(p.relative_to(CONFIGS_DIR).with_suffix("").as_posix() for p in CONFIGS_DIR.rglob("*.yaml"))


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """A YAML file by path, or a shipped config by name; an unknown name fails with the list of shipped ones."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return load_yaml(path)
    name = str(name_or_path)
    require(name in config_names(), f"--config {name}: no such file, nor a shipped config; pass a YAML file or "
            f"one of: {', '.join(config_names())}")
    return load_yaml(CONFIGS_DIR / f"{name}.yaml")


def check_config_method(config: Mapping[str, Any], method: str) -> None:
    """A config that names its method (``method_name``) names ``method``; one without the key fits any method."""
    named = config.get("method_name", method)
    if named == method:
        return
    shipped = [n for n in config_names() if load_yaml(CONFIGS_DIR / f"{n}.yaml").get("method_name") == method]
    other = f"a {method} config ({', '.join(shipped)})" if shipped else f"a config with method_name: {method}"
    raise UserError(f"this config is for method {named!r} (method_name: {named}), not {method!r}; "
                    f"run 'distill-diffusion train {named}' with it, or pass {other}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config; a missing or malformed file is a :class:`UserError`."""
    path = Path(path)
    state = "is not a file" if path.exists() else "does not exist"
    require(path.is_file(), f"config file {path} {state}; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text (a binary file?); pass a YAML file to --config") from None
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror}); check its permissions") from None
    except (yaml.YAMLError, ValueError) as exc:  # PyYAML raises ValueError for impossible dates such as 2001-13-45
        first = str(exc).splitlines()[0] if str(exc) else "parse error"
        raise UserError(f"config file {path} is not valid YAML ({first}); fix the syntax") from None
    require(isinstance(data, dict), f"config file {path} must hold a mapping of sections; write 'model:', 'data:', 'train:' and 'method:' sections")
    return data
