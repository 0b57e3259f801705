"""Hub tests: a local Hub server and a ``huggingface_hub`` client isolated from the machine.

A test module makes its fixture from :func:`local_hub`::

    @pytest.fixture
    def hub(tmp_path, monkeypatch):
        with local_hub(tmp_path / "hf_home", monkeypatch) as running:
            yield running

Nothing of
the client is faked: it sends real HTTP requests to :mod:`hub_server` on ``127.0.0.1``. Only
``huggingface_hub.constants`` is patched, because its environment variables are read once, at import
(``docs/hub-test-server.md``): endpoint, cache, token file, offline switch, telemetry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hub_server import HubServer, HubState, start_hub_server, stop_hub_server

TOKENS = {"hf_alice_write": "alice", "hf_bob_write": "bob"}
ALICE, BOB = "hf_alice_write", "hf_bob_write"


@dataclass
class LocalHub:
    """What a Hub test needs: the server, its endpoint, the isolated cache and a switch for offline mode."""

    server: HubServer
    url: str
    cache: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def state(self) -> HubState:
        return self.server.state

    def go_offline(self) -> None:
        """Act as ``HF_HUB_OFFLINE=1``: the client refuses to send any request."""
        import huggingface_hub.constants as constants

        self.monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def commits(self, repo_id: str) -> list[dict]:
        """The server's commit log for one repo, initial commit included."""
        return [c for c in self.state.commit_log if c["repo_id"] == repo_id]


def isolate_hub_client(home: Path, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``huggingface_hub`` at ``endpoint`` with its cache and token under ``home``; returns the cache."""
    import huggingface_hub.constants as constants

    cache = home / "hub"
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(name, raising=False)
    patches = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value)
    return cache


@contextmanager
def local_hub(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A fresh local Hub (users ``alice`` and ``bob``, see ``TOKENS``) and a client isolated under ``home``."""
    server, url = start_hub_server(TOKENS)
    try:
        cache = isolate_hub_client(home, url, monkeypatch)
        yield LocalHub(server=server, url=url, cache=cache, monkeypatch=monkeypatch)
    finally:
        stop_hub_server(server)
