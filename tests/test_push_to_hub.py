"""``--push_to_hub``: the export (not checkpoints, logs or caches) goes to a fake Hub on 127.0.0.1; errors are one line.

The fake Hub is an ``http.server`` in a thread that records every request: the repo created, the files of each
commit, the Authorization header. It answers ``preupload`` with the ``regular`` upload mode, so nothing goes
through LFS or xet. Nothing reaches the network.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from distill_diffusion.config import build_run_config
from distill_diffusion.errors import UserError
from distill_diffusion.trainers.methods.finetune import FineTuneConfig

TOKEN = "hf_fakeTokenForTests0123456789"
EXPORT = {"README.md": "card", "pytorch_lora_weights.safetensors": "weights", "scheduler_config.json": "{}",
          "unet/config.json": "{}", "unet/diffusion_pytorch_model.safetensors": "unet"}
NOT_EXPORT = {"checkpoint-2/model.safetensors": "ckpt", "diverged-checkpoint-1/model.safetensors": "bad",
              ".tmp-export/x": "half", "config.yaml": "train: {}", "logs/events": "log", "latent_cache/0.safetensors": "z",
              "validation/step-2/grid.png": "png", "round-1-8-steps/model_index.json": "{}"}


class FakeHub(ThreadingHTTPServer):
    """Records ``(method, path, headers, body)`` of every request; ``fail`` answers every request with that status."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.fail: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def created(self) -> list[dict]:
        return [json.loads(body) for method, path, _, body in self.requests if path == "/api/repos/create"]

    def committed(self) -> set[str]:
        return set(self.committed_bytes())

    def committed_bytes(self) -> dict[str, bytes]:
        """Path -> content of every file committed (the NDJSON lines ``{"key": "file", "value": {...}}``)."""
        out = {}
        for _, path, _, body in self.requests:
            if "/commit/" in path:
                for line in map(json.loads, filter(str.strip, body.decode().splitlines())):
                    if line["key"] == "file":
                        out[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        return out


class _Handler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _reply(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, b""))
        self._reply(self.server.fail or 404, {"error": "not here"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append(("POST", self.path.split("?")[0], {k.lower(): v for k, v in self.headers.items()}, body))
        if self.server.fail:
            self._reply(self.server.fail, {"error": "Internal Error"})
        elif self.path == "/api/repos/create":
            data = json.loads(body)
            self._reply(200, {"url": f"{self.server.url}/{data.get('organization') or 'me'}/{data['name']}"})
        elif self.path == "/api/validate-yaml":
            self._reply(200, {"errors": [], "warnings": []})
        elif "/preupload/" in self.path:
            files = json.loads(body)["files"]
            self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        elif "/commit/" in self.path:
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            self._reply(200, {"commitUrl": f"{self.server.url}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
        else:
            self._reply(404, {"error": "not here"})


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """A fake Hub, with huggingface_hub pointed at it (its ENDPOINT is read at import) and out of offline mode."""
    import huggingface_hub.constants as constants

    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    elsewhere: list[object] = []
    connect = socket.socket.connect

    def loopback_only(sock: socket.socket, address: object) -> None:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            elsewhere.append(address)
            raise OSError(f"test: no network ({address})")
        connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)  # offline mode is off: make sure nothing leaves
    yield server
    server.shutdown()
    server.server_close()
    assert not elsewhere, elsewhere


def _run(out: Path, **train: object):
    return build_run_config("finetune", FineTuneConfig, {"train": {"output_dir": str(out), **train}})


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def _no_token_in(root: Path) -> None:
    for path in root.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_uploads_the_export_only_with_the_token(hub: FakeHub, tmp_path: Path) -> None:
    from distill_diffusion.trainers.engine.export import push_to_hub

    out = tmp_path / "run"
    _write(out, {**EXPORT, **NOT_EXPORT})
    run = _run(out, push_to_hub=True, hub_model_id="me/student", hub_token=TOKEN, hub_private_repo=True)
    url = push_to_hub(run, ["round-1-8-steps"])
    assert url.endswith("/me/student")
    assert hub.created() == [{"name": "student", "organization": "me", "visibility": "private"}]
    assert hub.committed() == set(EXPORT)
    assert hub.committed_bytes()["README.md"] == b"card"
    calls = [headers for method, _, headers, _ in hub.requests if method == "POST"]  # a GET may come from the client's own checks
    assert len(calls) >= 3 and all(headers.get("authorization") == f"Bearer {TOKEN}" for headers in calls)
    run.save(out / "config.yaml")
    assert TOKEN not in repr(run) and "hub_token" not in (out / "config.yaml").read_text()
    _no_token_in(out)


def test_repo_defaults_to_the_output_folder_name(hub: FakeHub, tmp_path: Path) -> None:
    from distill_diffusion.trainers.engine.export import push_to_hub

    out = tmp_path / "lcm-lora-toy"
    _write(out, EXPORT)
    push_to_hub(_run(out, push_to_hub=True, hub_token=TOKEN))
    assert hub.created() == [{"name": "lcm-lora-toy", "organization": None}]  # the token's user: the Hub picks it
    assert hub.committed() == set(EXPORT)


@pytest.mark.parametrize("down", [False, True], ids=["http-500", "endpoint-down"])
def test_hub_error_is_one_line_and_the_export_stays(hub: FakeHub, tmp_path: Path, down: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    from distill_diffusion.trainers.engine.export import push_to_hub

    out = tmp_path / "run"
    _write(out, {**EXPORT, **NOT_EXPORT})
    hub.fail = 500
    if down:
        monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(UserError) as err:
        push_to_hub(_run(out, push_to_hub=True, hub_model_id="me/student", hub_token=TOKEN))
    message = str(err.value)
    assert "\n" not in message and TOKEN not in message
    assert f"the local export in {out} is complete" in message
    assert f"hf upload me/student {out} . --exclude 'checkpoint-*/'" in message and "--exclude config.yaml" in message
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == set(EXPORT) | set(NOT_EXPORT)


def test_options_are_checked_before_anything_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from distill_diffusion.hub import check_hub_access

    with pytest.raises(UserError, match="--hub_model_id given but train.push_to_hub is false"):
        _run(tmp_path / "a", hub_model_id="me/x")
    with pytest.raises(UserError, match=r"train.hub_model_id='me/x/y' is not a Hub repo id"):
        _run(tmp_path / "a", push_to_hub=True, hub_model_id="me/x/y")
    with pytest.raises(UserError, match="the name of train.output_dir, 'bad name!', is not a Hub repo id"):
        _run(tmp_path / "bad name!", push_to_hub=True)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(UserError, match="needs a Hub token"):
        check_hub_access(_run(tmp_path / "a", push_to_hub=True).train)
    check_hub_access(_run(tmp_path / "a", push_to_hub=True, hub_token=TOKEN).train)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="offline mode is on"):
        check_hub_access(_run(tmp_path / "a", push_to_hub=True, hub_token=TOKEN).train)


def test_cli_refuses_a_bad_repo_id_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from distill_diffusion.cli import main

    out = tmp_path / "run"
    assert main(["train", "finetune", "--config", "tiny/finetune", "--output_dir", str(out), "--push_to_hub",
                 "--hub_model_id", "me/bad id"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.hub_model_id='me/bad id' is not a Hub repo id") and err.count("\n") == 1
    assert not out.exists()


def test_card_names_base_model_only_for_a_hub_teacher(tmp_path: Path) -> None:
    """The Hub refuses a card whose ``base_model`` is not a model id: a local teacher's card leaves it out."""
    from distill_diffusion.models.export import TEACHER_SAMPLING, write_model_card

    common = {"method": "lcm", "paper": "p", "usage": "u", "sampling": TEACHER_SAMPLING}
    card = write_model_card(tmp_path, base_model="owner/sd@fp16-branch", **common).read_text()
    assert "base_model: owner/sd\n" in card
    card = write_model_card(tmp_path, base_model=str(tmp_path), **common).read_text()
    assert "base_model" not in card.split("---")[1] and str(tmp_path) in card


@pytest.mark.e2e
def test_train_pushes_the_export_and_a_failed_push_can_be_redone(
    hub: FakeHub, tiny_pipeline_dir: Path, toy_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One step with a checkpoint, validation images and a latent cache: only the pipeline and its card go up; a
    failed push is one line, exit 2, the export intact; the same command resumed at its end pushes it."""
    from distill_diffusion.cli import main

    out = tmp_path / "toy-student"
    args = ["train", "finetune", "--config", "tiny/finetune", "--pretrained_model_name_or_path", str(tiny_pipeline_dir),
            "--train_data_dir", str(toy_data_dir), "--output_dir", str(out), "--max_train_steps", "1",
            "--checkpointing_steps", "1", "--train_batch_size", "2", "--max_train_samples", "4", "--lr_warmup_steps", "0",
            "--validation_steps", "1", "--validation_inference_steps", "1", "--data.cache_latents", "true",
            "--progress_bar", "false", "--push_to_hub", "--hub_token", TOKEN]
    hub.fail = 500
    assert main(args) == 2
    err = capsys.readouterr().err  # above the error: the progress bars of loading the teacher
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and TOKEN not in err and err.count("error:") == 1
    assert last.startswith("error: uploading") and f"the local export in {out} is complete" in last
    assert (out / "model_index.json").is_file() and (out / "README.md").is_file()

    hub.fail = None
    hub.requests.clear()
    assert main([*args, "--resume_from_checkpoint", "latest"]) == 0
    run_files = {"checkpoint-1", "config.yaml", "validation", "latent_cache"}
    assert run_files <= {p.name for p in out.iterdir()}
    export = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] not in run_files}
    assert "model_index.json" in export and "unet/diffusion_pytorch_model.safetensors" in export
    assert hub.committed() == export
    assert hub.created() == [{"name": "toy-student", "organization": None}]
    _no_token_in(out)
