"""Vector packs on the Hugging Face Hub: download, upload and the model card.

:class:`~cmrm_guard.vectors.pack.VectorPack` calls these; they hold no pack logic. ``endpoint`` is
passed explicitly to every client call (``HF_ENDPOINT`` is read once, when ``huggingface_hub`` is
imported). ``huggingface_hub`` itself is imported only when a function here runs, so ``import
cmrm_guard`` stays light.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from cmrm_guard import package_version
from cmrm_guard.errors import PackError

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

    from cmrm_guard.vectors.pack import PackMeta

LIBRARY_NAME = "cmrm-guard"
CARD_TAGS = ["cmrm", "activation-steering", "vlm-safety"]
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")

CARD_TEMPLATE_FILE = "card_template.md"
"""The model card template (``string.Template`` syntax), shipped in the package; the top-level
``vectors/card_template.md`` links to it."""


def card_template() -> Template:
    """The model card template of a pack."""
    from importlib import resources

    text = (resources.files("cmrm_guard.vectors") / CARD_TEMPLATE_FILE).read_text(encoding="utf-8")
    return Template(text)


def render_model_card(meta: PackMeta, *, repo_id: str | None = None) -> str:
    """The ``README.md`` of a pack: YAML front matter (library, tags, base model), then the card body.

    Args:
        meta: the pack's metadata (with ``shifts_sha256`` filled, as saved).
        repo_id: Hub id to show in the usage snippet (default ``meta.repo_id`` or a placeholder).
    """
    from huggingface_hub import ModelCardData

    card_data = ModelCardData(library_name=LIBRARY_NAME, tags=list(CARD_TAGS), base_model=meta.base_model)
    base = meta.base_model or None
    if base and meta.base_model_revision:
        base = f"{base} (revision `{meta.base_model_revision}`)"
    evaluation = f"\n## Evaluation\n\n{meta.evaluation.strip()}\n" if meta.evaluation else ""
    body = card_template().substitute(
        model=meta.base_model or meta.model_type,
        version=meta.cmrm_guard_version,
        format_version=meta.format_version,
        base_model=base or "unknown",
        model_type=meta.model_type,
        layers=_layer_ranges(meta.layer_indices),
        num_layers=meta.num_layers,
        hidden_size=meta.hidden_size,
        estimator=meta.estimator,
        corruption=meta.corruption,
        num_samples=meta.num_samples,
        calibration_hash=f"`{meta.calibration_hash}`" if meta.calibration_hash else "not recorded",
        alpha=meta.alpha,
        application=meta.application,
        positions=meta.positions,
        step_scope=meta.step_scope,
        shifts_sha256=meta.shifts_sha256 or "not recorded",
        base_for_code=meta.base_model or "<base model id>",
        repo_for_code=repo_id or meta.repo_id or "<this repo id>",
        evaluation=evaluation,
        rebuild=rebuild_command(meta),
    )
    return f"---\n{card_data.to_yaml()}\n---\n\n{body}"


def rebuild_command(meta: PackMeta) -> str:
    """The ``cmrm-guard calibrate`` command line that rebuilds a pack like ``meta``'s."""
    parts = [
        "cmrm-guard calibrate",
        meta.base_model or "<base model id>",
        *(["--revision", meta.base_model_revision] if meta.base_model_revision else []),
        "--estimator", meta.estimator,
        "--corruption", meta.corruption,
        "--layers", ",".join(map(str, meta.layer_indices)),
        "--num-samples", str(meta.num_samples),
        "--alpha", repr(meta.alpha),
        "--application", meta.application,
        "--output", "./pack",
    ]  # fmt: skip
    return " ".join(parts)


def _layer_ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[list[int]] = []
    for i in layers:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans)


def download_pack(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    endpoint: str | None = None,
) -> tuple[Path, str | None]:
    """Fetch a pack repo into the Hub cache (or find it there) with ``snapshot_download``.

    Honours ``revision``, ``token``, ``cache_dir``, ``local_files_only`` and ``HF_HUB_OFFLINE``.

    Returns:
        ``(folder, commit)``: the snapshot folder and the resolved 40-hex commit sha.

    Raises:
        PackError: the id is not a repo id, the repo or revision is not found (or private without a
            valid token), or the pack is not cached while offline.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        folder = snapshot_download(
            repo_id, revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only,
            endpoint=endpoint, library_name=LIBRARY_NAME, library_version=package_version(),
        )  # fmt: skip
    except HFValidationError as err:
        raise PackError(
            f"{repo_id!r} is neither a local folder nor a Hub repo id ('namespace/name'): check the path or the id"
        ) from err
    except RevisionNotFoundError as err:
        raise PackError(
            f"vector pack {repo_id!r} has no revision {revision!r}: use a branch, tag or commit sha that exists"
        ) from err
    except RepositoryNotFoundError as err:  # also gated repos
        raise PackError(
            f"vector pack {repo_id!r} is not a local folder and was not found on {endpoint or 'the Hub'}: the repo "
            "does not exist, or it is private or gated and no valid token was sent; check the path or id, or pass "
            "token= (or run `hf auth login`)"
        ) from err
    except LocalEntryNotFoundError as err:
        raise PackError(
            f"vector pack {at} is not in the local Hub cache and the Hub cannot be reached (offline mode, "
            "local_files_only or no connection): pull it once online (`cmrm-guard pull "
            f"{repo_id}`) or pass a local folder"
        ) from err
    path = Path(folder)
    return path, path.name if _COMMIT_SHA.fullmatch(path.name) else None


def upload_pack(
    save: Callable[[Path], Any],
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload CMRM vector pack",
    endpoint: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Create the repo if needed, write the pack with ``save(folder)`` into a temporary folder, commit it once.

    All pack files go in a single ``create_commit`` (``upload_folder`` may split a large folder into
    several commits when ``hf_xet`` is installed), so a pack is never half-pushed.

    Args:
        save: writes the pack files into the folder it is given (``VectorPack.save_pretrained``).
        repo_id, private, token, revision, commit_message, endpoint, create_pr: as
            :meth:`~cmrm_guard.vectors.pack.VectorPack.push_to_hub`.

    Returns:
        The commit.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=package_version())
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and not create_pr and revision != "main":
        api.create_branch(repo_url.repo_id, branch=revision, exist_ok=True)
    # not huggingface_hub's SoftTemporaryDirectory: it skips its cleanup when the body raises (a refused push)
    with tempfile.TemporaryDirectory(prefix="cmrm-pack-", ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp)
        save(folder)
        operations = [
            CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
            for path in sorted(folder.iterdir())
            if path.is_file()
        ]
        return api.create_commit(
            repo_url.repo_id, operations=operations, commit_message=commit_message,
            revision=revision, create_pr=create_pr,
        )  # fmt: skip
