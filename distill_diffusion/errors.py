"""User-facing errors: one line naming the problem and the fix, exit code 2 from the CLI."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (path, config value, dataset, model).

    The CLI prints ``error: <message>`` on one line and exits with code 2, without a traceback.
    Messages name the problem *and* the fix, e.g.
    ``--model.pretrained_model_name_or_path /x: no such folder; pass a diffusers folder, a hub id or a .safetensors file``.
    """

    exit_code = 2


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)
