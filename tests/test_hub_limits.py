"""Hub packs under attack: deadlines, named errors, provenance, pinned ids and repos holding foreign files.

Every test talks only to the local Hub server on 127.0.0.1 (``hub_server.py``), with short deadlines.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hub_fixtures import ALICE, LocalHub, local_hub
from hub_server import Fault
from huggingface_hub import HfApi

from cmrm_guard.errors import (
    CMRMError,
    ConfigError,
    HubAuthError,
    HubError,
    HubServerError,
    HubTimeoutError,
    PackError,
    PackNotFoundError,
)
from cmrm_guard.vectors import hub as hub_module
from cmrm_guard.vectors.pack import PackMeta, VectorPack

HIDDEN = 8
REPO = "alice/tiny-cmrm"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    with local_hub(tmp_path / "hf_home", monkeypatch) as running:
        yield running


def make_pack(seed: int = 0) -> VectorPack:
    generator = torch.Generator().manual_seed(seed)
    meta = PackMeta(model_type="llava", hidden_size=HIDDEN, num_layers=3, layer_indices=[0, 2])
    return VectorPack({i: torch.randn(HIDDEN, generator=generator) for i in (0, 2)}, meta)


def resolve_requests(hub: LocalHub) -> list[str]:
    return [path for _, path in hub.state.requests if "/resolve/" in path]


def cached_files(hub: LocalHub) -> list[str]:
    return sorted(p.name for p in hub.cache.rglob("*") if p.is_file()) if hub.cache.exists() else []


# -- total deadlines (issue 21 point 6) ------------------------------------------------------------------
def test_a_hub_that_never_answers_hits_the_total_deadline(hub: LocalHub) -> None:
    make_pack().push_to_hub(REPO, token=ALICE, endpoint=hub.url)
    hub.state.faults.append(Fault(f"/api/models/{REPO}", action="hang"))

    with pytest.raises(HubTimeoutError, match=r"total deadline of 0\.5 s") as info:
        VectorPack.from_pretrained(REPO, endpoint=hub.url, timeout_s=0.5)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, CMRMError)


def test_a_slow_drip_download_hits_the_total_deadline(hub: LocalHub) -> None:
    make_pack().push_to_hub(REPO, token=ALICE, endpoint=hub.url)
    # every read gets a byte well within any per-read timeout; the whole file would take ~10 s
    hub.state.faults.append(Fault("shifts.safetensors", action="drip", method="GET", drip_interval_s=0.05))

    with pytest.raises(HubTimeoutError, match="downloading vector pack 'alice/tiny-cmrm'"):
        VectorPack.from_pretrained(REPO, endpoint=hub.url, timeout_s=1.0)
    assert "shifts.safetensors" not in cached_files(hub)  # an unfinished download is not a cached file


def test_push_has_a_total_deadline(hub: LocalHub) -> None:
    hub.state.faults.append(Fault("/commit/", action="hang"))
    with pytest.raises(HubTimeoutError, match="pushing a vector pack"):
        make_pack().push_to_hub(REPO, token=ALICE, endpoint=hub.url, timeout_s=0.5)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_the_deadline_setting_is_checked(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(hub_module.HUB_TIMEOUT_ENV, value)
    with pytest.raises(ConfigError, match=hub_module.HUB_TIMEOUT_ENV):
        hub_module.hub_timeout()
    monkeypatch.delenv(hub_module.HUB_TIMEOUT_ENV)
    assert hub_module.hub_timeout() == hub_module.DEFAULT_HUB_TIMEOUT_S
    with pytest.raises(ConfigError, match="timeout_s"):
        hub_module.hub_timeout(float(value) if value != "soon" else True)  # type: ignore[arg-type]


# -- named errors (point 10) ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "error", "match"),
    [
        (401, HubAuthError, "HTTP 401.*token is invalid"),
        (403, HubAuthError, "HTTP 403"),
        (500, HubServerError, "HTTP 500.*retry later"),
        (429, HubServerError, "HTTP 429"),
    ],
)
def test_hub_http_errors_are_named(hub: LocalHub, status: int, error: type, match: str) -> None:
    make_pack().push_to_hub(REPO, token=ALICE, endpoint=hub.url)
    hub.state.faults.append(Fault(f"/api/models/{REPO}", status=status))

    with pytest.raises(error, match=match) as info:
        VectorPack.from_pretrained(REPO, endpoint=hub.url, timeout_s=5)
    assert "offline" not in str(info.value)


def test_a_missing_repo_is_pack_not_found(hub: LocalHub) -> None:
    with pytest.raises(PackNotFoundError, match="was not found"):
        VectorPack.from_pretrained("alice/nothing-here", endpoint=hub.url, timeout_s=5)


# -- only the pack's files are downloaded, after the listing is checked (point 8) ------------------------
def test_a_repo_with_foreign_files_is_refused_before_any_download(hub: LocalHub) -> None:
    make_pack().push_to_hub(REPO, token=ALICE, endpoint=hub.url)
    api = HfApi(endpoint=hub.url, token=ALICE)
    api.upload_file(path_or_fileobj=b"\0" * (1 << 20), path_in_repo="junk.bin", repo_id=REPO)
    api.upload_file(path_or_fileobj=b"import os\n", path_in_repo="modeling_evil.py", repo_id=REPO)
    hub.state.requests.clear()

    with pytest.raises(
        PackError, match=r"unexpected files: junk\.bin, modeling_evil\.py.*nothing was downloaded"
    ):
        VectorPack.from_pretrained(REPO, endpoint=hub.url, timeout_s=5)
    assert resolve_requests(hub) == []
    assert cached_files(hub) == []


def test_an_oversized_pack_file_is_refused_from_the_listing(
    hub: LocalHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pack().push_to_hub(REPO, token=ALICE, endpoint=hub.url)
    monkeypatch.setitem(hub_module.MAX_FILE_BYTES, "shifts.safetensors", 64)
    hub.state.requests.clear()

    with pytest.raises(PackError, match=r"shifts\.safetensors \(\d+ bytes, limit 64\)"):
        VectorPack.from_pretrained(REPO, endpoint=hub.url, timeout_s=5)
    assert resolve_requests(hub) == []


def test_a_pull_downloads_the_pack_files_only(hub: LocalHub) -> None:
    make_pack().push_to_hub(REPO, token=ALICE, endpoint=hub.url)
    VectorPack.from_pretrained(REPO, endpoint=hub.url, timeout_s=5)
    fetched = {path.rsplit("/", 1)[-1] for path in resolve_requests(hub)}
    assert fetched == {"README.md", "pack_config.json", "shifts.safetensors"}


# -- provenance and pinned ids (point 7) ------------------------------------------------------------------
def test_a_local_config_cannot_claim_provenance(tmp_path: Path) -> None:
    folder = make_pack().save_pretrained(tmp_path / "pack")
    config = json.loads((folder / "pack_config.json").read_text())
    config.update(repo_id="trusted-org/audited-pack", revision="a" * 40)
    (folder / "pack_config.json").write_text(json.dumps(config))

    with pytest.warns(UserWarning, match="claims repo_id, revision; ignored"):
        pack = VectorPack.from_pretrained(folder)
    assert (pack.meta.repo_id, pack.meta.revision) == (None, None)
    assert pack.provenance == "local path"
    assert "audited" not in repr(pack)


def test_a_hub_download_reports_its_resolved_commit(hub: LocalHub) -> None:
    commit = make_pack().push_to_hub(REPO, token=ALICE, endpoint=hub.url)
    pack = VectorPack.from_pretrained(REPO, endpoint=hub.url, timeout_s=5)
    assert pack.provenance == f"{REPO}@{commit.oid}"


def test_a_pinned_hub_id_never_resolves_to_a_local_folder(
    hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_hub = make_pack(seed=0)
    commit = on_hub.push_to_hub(REPO, token=ALICE, endpoint=hub.url)
    monkeypatch.chdir(tmp_path)
    make_pack(seed=5).save_pretrained(Path(REPO))  # ./alice/tiny-cmrm: a different pack
    hub.state.requests.clear()

    pinned = VectorPack.from_pretrained(REPO, revision=commit.oid, endpoint=hub.url, timeout_s=5)

    assert torch.equal(pinned.shifts[0], on_hub.shifts[0])
    assert pinned.meta.revision == commit.oid and resolve_requests(hub)
    # a caller says "local" with a Path, an explicit ./ path, or no revision
    assert torch.equal(VectorPack.from_pretrained(f"./{REPO}").shifts[0], make_pack(seed=5).shifts[0])
    assert torch.equal(VectorPack.from_pretrained(REPO).shifts[0], make_pack(seed=5).shifts[0])
    for local in (Path(REPO), f"./{REPO}"):
        with pytest.raises(PackError, match="a revision applies to Hub repo ids only"):
            VectorPack.from_pretrained(local, revision=commit.oid)
    # from_hub never looks at the disk, revision or not
    assert VectorPack.from_hub(REPO, endpoint=hub.url, timeout_s=5).provenance == f"{REPO}@{commit.oid}"


def test_a_missing_local_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="does not exist"):
        VectorPack.from_pretrained(tmp_path / "nope")
    assert re.search(
        "does not exist", str(pytest.raises(PackError, VectorPack.from_pretrained, "./nope").value)
    )


def test_an_unreachable_hub_is_a_named_error(hub: LocalHub) -> None:
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(HubError) as info:
        VectorPack.from_pretrained(REPO, endpoint=f"http://127.0.0.1:{port}", timeout_s=3)
    assert isinstance(info.value, OSError) and isinstance(info.value, CMRMError)
