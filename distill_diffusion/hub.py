"""Upload of a run's export to the Hugging Face Hub: the ``--push_to_hub`` options, their checks, and the upload.

The options and the upload follow the diffusers training scripts (``--push_to_hub``, ``--hub_model_id``,
``--hub_token``; ``create_repo(exist_ok=True)`` then ``upload_folder`` with ``ignore_patterns``), see
docs/training.md. Everything that can be checked without the network (the repo id, offline mode, a token at hand)
is checked before training; an upload that fails is one :class:`UserError` saying that the local export is
complete and how to upload it again. The token is never written: the saved config leaves it out
(:func:`~distill_diffusion.config_types.public_dict`), and so do reprs and error messages.
"""

from __future__ import annotations

import fnmatch
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from distill_diffusion.errors import UserError, require

logger = logging.getLogger(__name__)


@dataclass
class HubOptions:
    """The train section's Hub options, named as in the diffusers scripts (:class:`~distill_diffusion.config.TrainConfig`
    extends this class, so they are ``--train.push_to_hub`` or bare ``--push_to_hub``)."""

    #: Upload the export (model files and model card; no checkpoints, logs or caches) to the Hugging Face Hub at the
    #: end of training.
    push_to_hub: bool = False
    #: Hub repo to upload to, NAME or USER/NAME (default: the name of output_dir, under the token's user).
    hub_model_id: str | None = None
    #: Hub access token (default: HF_TOKEN or the token `hf auth login` saved); never written to config.yaml.
    hub_token: str | None = field(default=None, repr=False, metadata={"secret": True})
    #: Create the Hub repo private (a repo that exists keeps its visibility).
    hub_private_repo: bool = False

    def check_hub_options(self, output_dir: str) -> None:
        """The Hub options agree and name a valid repo (no network); the train section's checks call it."""
        if self.push_to_hub:
            hub_repo_id(self, output_dir)
            return
        given = [f"--{name}" for name in ("hub_model_id", "hub_token", "hub_private_repo") if getattr(self, name)]
        require(not given, f"{', '.join(given)} given but train.push_to_hub is false; pass --push_to_hub to upload "
                           f"the export, or drop {' and '.join(given)}")


def hub_repo_id(options: HubOptions, output_dir: str) -> str:
    """``hub_model_id``, or the name of ``output_dir`` as in the diffusers scripts; a malformed id is a UserError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    repo_id = options.hub_model_id or Path(output_dir).expanduser().resolve().name
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        reason = (str(exc).strip().splitlines() or [""])[0].rstrip(".")
        what = f"train.hub_model_id={repo_id!r}" if options.hub_model_id else f"the name of train.output_dir, {repo_id!r},"
        raise UserError(f"{what} is not a Hub repo id ({reason}); pass --hub_model_id NAME or USER/NAME "
                        "(letters, digits, '-', '_' and '.')") from None
    return repo_id


def check_hub_access(options: HubOptions) -> None:
    """Before any model loads: the Hub may be reached (no offline mode) and a token is at hand (no network)."""
    from huggingface_hub import constants, get_token

    require(not constants.HF_HUB_OFFLINE, "--push_to_hub needs the Hub, but offline mode is on (HF_HUB_OFFLINE or "
                                          "TRANSFORMERS_OFFLINE); unset it, or drop --push_to_hub and upload the export later")
    require(bool(options.hub_token or get_token()), "--push_to_hub needs a Hub token with write access; run "
                                                    "`hf auth login`, set HF_TOKEN, or pass --hub_token")


def push_folder(folder: Path, options: HubOptions, repo_id: str, skip: Sequence[str]) -> str:
    """Upload ``folder`` to ``repo_id`` (created if missing), but its top-level entries matching a glob of ``skip``.

    Returns the repo's URL. Any failure (no or a wrong token, the network, an HTTP error, a name the Hub refuses)
    is one :class:`UserError` saying that ``folder`` is complete, with the command that uploads it again.
    """
    from huggingface_hub import HfApi

    ignore = ignore_patterns(folder, skip)
    try:
        api = HfApi(token=options.hub_token)
        url = api.create_repo(repo_id, private=options.hub_private_repo or None, exist_ok=True)
        api.upload_folder(repo_id=url.repo_id, folder_path=folder, ignore_patterns=ignore, commit_message="End of training")
    except Exception as exc:  # whatever went wrong remotely, the export is safe on disk: say so, and how to retry
        command = upload_command(repo_id, folder, ignore, options.hub_private_repo)
        raise UserError(f"uploading {folder} to the Hub as {repo_id} failed ({_reason(exc, options.hub_token)}); the "
                        f"local export in {folder} is complete: upload it again with `{command}`") from None
    logger.info(f"uploaded {folder} to {url}")
    return str(url)


def ignore_patterns(folder: Path, skip: Sequence[str]) -> list[str]:
    """``upload_folder`` patterns for the top-level entries of ``folder`` matching ``skip`` (``name/`` for a folder)."""
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    patterns: list[str] = []
    for glob in skip:
        matched = [e for e in entries if fnmatch.fnmatch(e.name, glob)]
        patterns += [glob + "/"] if any(e.is_dir() for e in matched) else []
        patterns += [glob] if any(not e.is_dir() for e in matched) else []
    return patterns


def upload_command(repo_id: str, folder: Path, ignore: Sequence[str], private: bool) -> str:
    """The ``hf upload`` command that uploads what :func:`push_folder` would (the token comes from the login)."""
    excludes = [arg for pattern in ignore for arg in ("--exclude", pattern)]
    return shlex.join(["hf", "upload", repo_id, str(folder), ".", *excludes, *(["--private"] if private else [])])


def _reason(exc: Exception, token: str | None) -> str:
    """The first line of ``exc`` with its class (the token masked should the message quote it), and for a refused
    token what to do about it."""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    if token:
        text = text.replace(token, "***")
    reason = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if getattr(getattr(exc, "response", None), "status_code", None) in (401, 403):
        reason += "; the token was refused or may not write there: `hf auth login` again, or pass --hub_token with write access"
    return reason
