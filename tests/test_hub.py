"""Vector packs on a Hub: the real ``huggingface_hub`` client against a local Hub-compatible server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hub_fixtures import ALICE, BOB, LocalHub, local_hub
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from cmrm_guard.errors import HubAuthError, PackError
from cmrm_guard.vectors.pack import PackMeta, VectorPack

HIDDEN = 8
PACK_FILES = ["README.md", "pack_config.json", "shifts.safetensors"]


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    with local_hub(tmp_path / "hf_home", monkeypatch) as running:
        yield running


def make_pack(seed: int = 0) -> VectorPack:
    generator = torch.Generator().manual_seed(seed)
    meta = PackMeta(
        model_type="llava",
        hidden_size=HIDDEN,
        num_layers=3,
        layer_indices=[0, 2],
        base_model="org/tiny-llava",
    )
    return VectorPack({i: torch.randn(HIDDEN, generator=generator) for i in (0, 2)}, meta)


def assert_same_shifts(a: VectorPack, b: VectorPack) -> None:
    assert a.layer_indices == b.layer_indices
    assert all(torch.equal(a.shifts[i], b.shifts[i]) for i in a.layer_indices)


def test_push_creates_the_repo_with_one_commit(hub: LocalHub) -> None:
    commit = make_pack().push_to_hub("alice/tiny-cmrm", token=ALICE, endpoint=hub.url)

    commits = hub.commits("alice/tiny-cmrm")
    assert [c["summary"] for c in commits] == ["initial commit", "Upload CMRM vector pack"]
    assert commits[-1]["files"] == [".gitattributes", *PACK_FILES]
    assert commit.oid == commits[-1]["sha"] and re.fullmatch(r"[0-9a-f]{40}", commit.oid)
    assert sum(1 for method, path in hub.state.requests if path.endswith("/commit/main")) == 1
    card = hub.state.repos[("model", "alice/tiny-cmrm")].commits[commit.oid]["README.md"].decode()
    assert "library_name: cmrm-guard" in card and "base_model: org/tiny-llava" in card
    assert 'vectors="alice/tiny-cmrm"' in card and "cmrm-guard pull alice/tiny-cmrm" in card


def test_pull_by_repo_id(hub: LocalHub) -> None:
    pack = make_pack()
    commit = pack.push_to_hub("alice/tiny-cmrm", token=ALICE, endpoint=hub.url)

    pulled = VectorPack.from_pretrained("alice/tiny-cmrm", endpoint=hub.url)

    assert_same_shifts(pulled, pack)
    assert (pulled.meta.repo_id, pulled.meta.revision) == ("alice/tiny-cmrm", commit.oid)
    assert (
        pulled.meta.model_copy(update={"repo_id": None, "revision": None, "shifts_sha256": None}) == pack.meta
    )
    assert "repo_id='alice/tiny-cmrm'" in repr(pulled)


def test_pinned_revision_keeps_the_old_pack(hub: LocalHub) -> None:
    old, new = make_pack(seed=0), make_pack(seed=1)
    first = old.push_to_hub("alice/tiny-cmrm", token=ALICE, endpoint=hub.url)
    second = new.push_to_hub("alice/tiny-cmrm", token=ALICE, endpoint=hub.url, commit_message="recalibrate")

    pinned = VectorPack.from_pretrained("alice/tiny-cmrm", revision=first.oid, endpoint=hub.url)
    latest = VectorPack.from_pretrained("alice/tiny-cmrm", endpoint=hub.url)

    assert_same_shifts(pinned, old)
    assert_same_shifts(latest, new)
    assert (pinned.meta.revision, latest.meta.revision) == (first.oid, second.oid)
    assert re.fullmatch(r"[0-9a-f]{40}", latest.meta.revision)


def test_offline_pull_comes_from_the_cache(hub: LocalHub) -> None:
    pack = make_pack()
    commit = pack.push_to_hub("alice/tiny-cmrm", token=ALICE, endpoint=hub.url)
    VectorPack.from_pretrained("alice/tiny-cmrm", endpoint=hub.url)
    hub.go_offline()
    hub.state.requests.clear()

    by_branch = VectorPack.from_pretrained("alice/tiny-cmrm", endpoint=hub.url)
    by_sha = VectorPack.from_pretrained("alice/tiny-cmrm", revision=commit.oid, endpoint=hub.url)

    assert hub.state.requests == []
    assert_same_shifts(by_branch, pack)
    assert by_branch.meta.revision == by_sha.meta.revision == commit.oid
    with pytest.raises(PackError, match="not in the local Hub cache"):
        VectorPack.from_pretrained("alice/never-pulled", endpoint=hub.url)


def test_local_files_only_uses_the_cache(hub: LocalHub) -> None:
    make_pack().push_to_hub("alice/tiny-cmrm", token=ALICE, endpoint=hub.url)
    with pytest.raises(PackError, match="local_files_only"):
        VectorPack.from_pretrained("alice/tiny-cmrm", local_files_only=True, endpoint=hub.url)
    VectorPack.from_pretrained("alice/tiny-cmrm", endpoint=hub.url)
    hub.state.requests.clear()
    assert VectorPack.from_pretrained(
        "alice/tiny-cmrm", local_files_only=True, endpoint=hub.url
    ).layer_indices
    assert hub.state.requests == []


def test_private_pack_needs_its_owners_token(hub: LocalHub) -> None:
    make_pack().push_to_hub("alice/secret-cmrm", private=True, token=ALICE, endpoint=hub.url)
    assert hub.state.repos[("model", "alice/secret-cmrm")].private

    for token in (False, BOB):
        with pytest.raises(PackError, match="private or gated and no valid token"):
            VectorPack.from_pretrained("alice/secret-cmrm", token=token, endpoint=hub.url)
    pulled = VectorPack.from_pretrained("alice/secret-cmrm", token=ALICE, endpoint=hub.url)
    assert pulled.meta.repo_id == "alice/secret-cmrm"


def test_push_with_another_users_token_is_refused(hub: LocalHub) -> None:
    make_pack().push_to_hub("alice/tiny-cmrm", token=ALICE, endpoint=hub.url)
    before = len(hub.state.commit_log)

    with pytest.raises(HubAuthError, match="HTTP 403.*no write access") as info:
        make_pack(seed=1).push_to_hub("alice/tiny-cmrm", token=BOB, endpoint=hub.url)
    assert isinstance(info.value, PermissionError)
    assert info.value.__cause__.response.status_code == 403
    with pytest.raises(HubAuthError, match="HTTP 403"):
        make_pack().push_to_hub("alice/new-cmrm", token=BOB, endpoint=hub.url)
    assert len(hub.state.commit_log) == before


def test_push_to_a_new_branch(hub: LocalHub) -> None:
    make_pack().push_to_hub("alice/tiny-cmrm", token=ALICE, endpoint=hub.url)
    commit = make_pack(seed=1).push_to_hub(
        "alice/tiny-cmrm", token=ALICE, endpoint=hub.url, revision="alpha-0.5"
    )
    on_branch = VectorPack.from_pretrained("alice/tiny-cmrm", revision="alpha-0.5", endpoint=hub.url)
    assert on_branch.meta.revision == commit.oid
    assert_same_shifts(on_branch, make_pack(seed=1))
    assert_same_shifts(VectorPack.from_pretrained("alice/tiny-cmrm", endpoint=hub.url), make_pack())


def test_pull_refuses_a_repo_with_foreign_files(hub: LocalHub) -> None:
    make_pack().push_to_hub("alice/tiny-cmrm", token=ALICE, endpoint=hub.url)
    HfApi(endpoint=hub.url, token=ALICE).upload_file(
        path_or_fileobj=b"not a pack file", path_in_repo="pytorch_model.bin", repo_id="alice/tiny-cmrm"
    )
    with pytest.raises(
        PackError, match=r"alice/tiny-cmrm@[0-9a-f]{40} holds unexpected files: pytorch_model\.bin"
    ):
        VectorPack.from_pretrained("alice/tiny-cmrm", endpoint=hub.url)


@pytest.mark.parametrize(
    ("pack_id", "revision", "match"),
    [
        ("alice/missing", None, "was not found"),
        ("alice/tiny-cmrm", "no-such-branch", "has no revision 'no-such-branch'"),
        ("not a/valid id!", None, "neither a local folder nor a Hub repo id"),
    ],
)
def test_pull_errors_are_clear(hub: LocalHub, pack_id: str, revision: str | None, match: str) -> None:
    make_pack().push_to_hub("alice/tiny-cmrm", token=ALICE, endpoint=hub.url)
    with pytest.raises(PackError, match=match):
        VectorPack.from_pretrained(pack_id, revision=revision, endpoint=hub.url)


def test_server_speaks_the_hub_protocol(hub: LocalHub, tmp_path: Path) -> None:
    """The server answers the client's own calls as the Hub does (for other tests to rely on)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi(endpoint=hub.url, token=ALICE)
    url = api.create_repo("alice/files")
    assert url.repo_id == "alice/files" and api.create_repo("alice/files", exist_ok=True) == url
    commit = api.upload_file(path_or_fileobj=b"hello", path_in_repo="sub/a.txt", repo_id="alice/files")
    assert api.model_info("alice/files").sha == commit.oid
    assert api.list_repo_files("alice/files") == [".gitattributes", "sub/a.txt"]
    path = hf_hub_download("alice/files", "sub/a.txt", revision=commit.oid, endpoint=hub.url)
    assert Path(path).read_bytes() == b"hello" and commit.oid in path
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("alice/files", "nope.txt", endpoint=hub.url)
    with pytest.raises(RevisionNotFoundError):
        api.model_info("alice/files", revision="nope")
    api.create_repo("alice/private", private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("alice/private")
    with pytest.raises(HfHubHTTPError, match="409"):
        api.create_repo("alice/files")
