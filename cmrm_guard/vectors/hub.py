"""Vector packs on the Hugging Face Hub: download, upload and the model card.

:class:`~cmrm_guard.vectors.pack.VectorPack` calls these; they hold no pack logic. Every download and
upload has one total deadline (:func:`hub_timeout`), and every failure is a named cmrm-guard error
(:class:`~cmrm_guard.errors.PackNotFoundError`, :class:`~cmrm_guard.errors.HubAuthError`,
:class:`~cmrm_guard.errors.HubServerError`, :class:`~cmrm_guard.errors.HubTimeoutError`, ...). ``endpoint`` is
passed explicitly to every client call (``HF_ENDPOINT`` is read once, when ``huggingface_hub`` is
imported). ``huggingface_hub`` itself is imported only when a function here runs, so ``import
cmrm_guard`` stays light.
"""

from __future__ import annotations

import functools
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from numbers import Real
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any, TypeVar

from cmrm_guard import package_version
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

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

    from cmrm_guard.vectors.pack import PackMeta

LIBRARY_NAME = "cmrm-guard"
CARD_TAGS = ["cmrm", "activation-steering", "vlm-safety"]
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_T = TypeVar("_T")

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


DEFAULT_HUB_TIMEOUT_S = 120.0
"""Total deadline of one Hub operation (a pack download or upload), in seconds."""
HUB_TIMEOUT_ENV = "CMRM_GUARD_HUB_TIMEOUT_S"
"""Environment variable that overrides :data:`DEFAULT_HUB_TIMEOUT_S` when no ``timeout_s`` is passed."""

MAX_FILE_BYTES = {"pack_config.json": 1 << 20, "README.md": 1 << 20, "shifts.safetensors": 256 << 20}
"""Largest size accepted for each pack file, checked from the repo listing before anything is downloaded
(and from the file itself when a folder is loaded)."""
REQUIRED_FILES = ("pack_config.json", "shifts.safetensors")
TOLERATED_REPO_FILES = frozenset({".gitattributes"})
"""Files a pack repo may hold besides the pack's own (every Hub repo starts with ``.gitattributes``); never downloaded."""


def hub_timeout(timeout_s: float | None = None) -> float:
    """The total deadline to use: ``timeout_s``, else ``$CMRM_GUARD_HUB_TIMEOUT_S``, else the default (120 s).

    Raises:
        ConfigError: the value is not a finite number of seconds > 0.
    """
    source = "timeout_s"
    if timeout_s is None:
        text = os.environ.get(HUB_TIMEOUT_ENV)
        if text is None or not text.strip():
            return DEFAULT_HUB_TIMEOUT_S
        source = HUB_TIMEOUT_ENV
        try:
            timeout_s = float(text)
        except ValueError:
            raise ConfigError(f"{HUB_TIMEOUT_ENV}={text!r}: expected a number of seconds > 0") from None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, Real):
        raise ConfigError(f"{source}={timeout_s!r}: expected a number of seconds > 0")
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ConfigError(f"{source}={timeout_s!r}: expected a finite number of seconds > 0")
    return float(timeout_s)


class _Deadline:
    """A total deadline shared by every request of one Hub operation."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds, self.what = seconds, what
        self.end = time.monotonic() + seconds
        self.expired = threading.Event()

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def error(self) -> HubTimeoutError:
        return HubTimeoutError(
            f"{self.what} did not finish within its total deadline of {self.seconds:g} s: the Hub is slow or not"
            f" answering; retry, or raise the deadline (timeout_s= or ${HUB_TIMEOUT_ENV})"
        )

    def check(self) -> None:
        if self.expired.is_set() or time.monotonic() >= self.end:
            self.expired.set()
            raise self.error()

    def run(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` in a worker thread; :class:`HubTimeoutError` when the deadline passes first.

        The caller never waits past the deadline. A request still open then is abandoned to its daemon
        thread: a download in it stops at its next received chunk (see :class:`_DeadlineBar`), or when the
        server closes or the client's per-read timeout (``HF_HUB_DOWNLOAD_TIMEOUT``) trips; an unfinished
        file never counts as cached.
        """
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["value"] = fn()
            except BaseException as err:  # noqa: BLE001 (re-raised in the caller's thread)
                outcome["error"] = err

        worker = threading.Thread(target=target, name="cmrm-guard-hub", daemon=True)
        worker.start()
        worker.join(self.remaining())
        if worker.is_alive():
            self.expired.set()
            raise self.error()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


class _DeadlineBar:
    """The ``tqdm_class`` given to ``hf_hub_download``: a silent bar whose ``update`` (called once per received
    chunk) stops the download when the deadline has passed or the file grows past its size limit."""

    def __init__(self, deadline: _Deadline, name: str, limit: int, **_: Any) -> None:
        self.deadline, self.name, self.limit, self.received = deadline, name, limit, 0

    def update(self, n: int = 1) -> None:
        self.received += n
        if self.received > self.limit:
            raise PackError(
                f"vector pack file {self.name} is over its size limit of {self.limit} bytes; refused"
            )
        self.deadline.check()

    def __enter__(self) -> _DeadlineBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None


def download_pack(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    endpoint: str | None = None,
    timeout_s: float | None = None,
) -> tuple[Path, str | None]:
    """Fetch a pack's files into the Hub cache (or find them there).

    Online, the revision is resolved to a commit and the repo is listed first: a repo holding anything but
    the pack files (and ``.gitattributes``), or a file over its limit (:data:`MAX_FILE_BYTES`), is refused
    before any file is downloaded; then only ``pack_config.json``, ``shifts.safetensors`` and ``README.md``
    are downloaded, at that commit. Offline (``HF_HUB_OFFLINE=1`` or ``local_files_only``) the same files
    come from the cache, with no request. The whole operation has one total deadline.

    Args:
        timeout_s: total deadline in seconds (default :func:`hub_timeout`).
        others: as :meth:`~cmrm_guard.vectors.pack.VectorPack.from_hub`.

    Returns:
        ``(folder, commit)``: the snapshot folder and the resolved 40-hex commit sha.

    Raises:
        PackNotFoundError: the repo or revision is not found (or private without a valid token).
        PackError: the id is not a repo id, the repo holds foreign or oversized files, or the pack is not
            cached while offline.
        HubTimeoutError: the deadline passed. HubAuthError: token refused (401/403).
        HubServerError: the Hub answered 5xx or 429. HubError: the Hub could not be reached.
    """
    from huggingface_hub import constants

    deadline = _Deadline(hub_timeout(timeout_s), f"downloading vector pack {repo_id!r}")
    offline = bool(local_files_only or constants.HF_HUB_OFFLINE)
    at = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        if offline:
            folder = deadline.run(lambda: _cached_files(repo_id, revision, cache_dir))
        else:
            folder = deadline.run(
                lambda: _fetch_files(repo_id, revision, token, cache_dir, endpoint, deadline)
            )
    except CMRMError:
        raise
    except Exception as err:
        raise _named_error(
            err, repo_id=repo_id, revision=revision, at=at, endpoint=endpoint, offline=offline
        ) from err
    return folder, folder.name if _COMMIT_SHA.fullmatch(folder.name) else None


def _cached_files(repo_id: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    """The snapshot folder of a cached pack, no request sent (README.md is optional)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    folder: Path | None = None
    for name in (*REQUIRED_FILES, "README.md"):
        try:
            path = hf_hub_download(
                repo_id, name, revision=revision, cache_dir=cache_dir, local_files_only=True
            )
        except (LocalEntryNotFoundError, EntryNotFoundError):
            if name in REQUIRED_FILES:
                raise
            continue
        folder = Path(path).parent
    assert folder is not None
    return folder


def _fetch_files(
    repo_id: str,
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | Path | None,
    endpoint: str | None,
    deadline: _Deadline,
) -> Path:
    """Resolve, list, check, then download only the pack files at the resolved commit."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=package_version())
    info = api.model_info(repo_id, revision=revision, timeout=max(deadline.remaining(), 0.001))
    deadline.check()
    sha = info.sha
    if not (isinstance(sha, str) and _COMMIT_SHA.fullmatch(sha)):
        raise PackError(f"the Hub answered no commit sha for vector pack {repo_id!r}: got {sha!r}")
    where = f"{repo_id}@{sha}"
    sizes: dict[str, int] = {}
    unexpected: list[str] = []
    for entry in api.list_repo_tree(repo_id, revision=sha, recursive=False):
        deadline.check()
        if not isinstance(entry, RepoFile):
            unexpected.append(entry.path + "/")
        elif entry.path in MAX_FILE_BYTES:
            sizes[entry.path] = int(entry.size)
        elif entry.path not in TOLERATED_REPO_FILES:
            unexpected.append(entry.path)
    if unexpected:
        raise PackError(
            f"vector pack {where} holds unexpected files: {', '.join(sorted(unexpected))}. A pack holds only "
            f"{', '.join(sorted(MAX_FILE_BYTES))}; nothing was downloaded (no code or pickle is ever loaded from a pack)"
        )
    for name in REQUIRED_FILES:
        if name not in sizes:
            raise PackError(f"vector pack {where} has no {name}: it is not a (complete) vector pack")
    over = [
        f"{n} ({s} bytes, limit {MAX_FILE_BYTES[n]})"
        for n, s in sorted(sizes.items())
        if s > MAX_FILE_BYTES[n]
    ]
    if over:
        raise PackError(
            f"vector pack {where} has files over their size limit: {', '.join(over)}; nothing was downloaded"
        )
    folder: Path | None = None
    for name in sorted(sizes):
        deadline.check()
        # a factory, not a tqdm class: huggingface_hub calls it with the bar's keyword arguments
        bar: Any = functools.partial(_DeadlineBar, deadline, name, MAX_FILE_BYTES[name])
        path = hf_hub_download(
            repo_id, name, revision=sha, token=token, cache_dir=cache_dir, endpoint=endpoint,
            etag_timeout=max(deadline.remaining(), 0.001), tqdm_class=bar,
            library_name=LIBRARY_NAME, library_version=package_version(),
        )  # fmt: skip
        folder = Path(path).parent
    deadline.check()
    assert folder is not None
    _remember_ref(folder.parent.parent, revision or "main", sha)
    return folder


_SAFE_REF = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def _remember_ref(storage: Path, revision: str, sha: str) -> None:
    """Record in the cache that ``revision`` resolved to ``sha`` (``refs/<revision>``), so an offline load
    of the same revision finds this download, as ``snapshot_download`` does."""
    if revision == sha or not _SAFE_REF.fullmatch(revision) or ".." in revision.split("/"):
        return
    ref = storage / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if not ref.is_file() or ref.read_text().strip() != sha:
        ref.write_text(sha)


def _named_error(
    err: Exception, *, repo_id: str, revision: str | None, at: str, endpoint: str | None, offline: bool
) -> Exception:
    """The cmrm-guard error for a ``huggingface_hub`` / ``httpx`` failure of a pack download."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(err, HFValidationError):
        return PackError(
            f"{repo_id!r} is neither a local folder nor a Hub repo id ('namespace/name'): check the path or the id"
        )
    if isinstance(err, RevisionNotFoundError):
        return PackNotFoundError(
            f"vector pack {repo_id!r} has no revision {revision!r}: use a branch, tag or commit sha that exists"
        )
    if isinstance(err, RepositoryNotFoundError):  # also gated repos
        return PackNotFoundError(
            f"vector pack {repo_id!r} was not found on {endpoint or 'the Hub'}: the repo "
            "does not exist, or it is private or gated and no valid token was sent; check the id, or pass "
            "token= (or run `hf auth login`)"
        )
    if offline and isinstance(err, LocalEntryNotFoundError | OfflineModeIsEnabled):
        return PackError(
            f"vector pack {at} is not in the local Hub cache and offline mode (HF_HUB_OFFLINE) or "
            f"local_files_only is on: pull it once online (`cmrm-guard pull {repo_id}`) or pass a local folder"
        )
    if isinstance(err, EntryNotFoundError):
        return PackError(
            f"vector pack {at}: a pack file vanished from the repo while it was downloaded ({err})"
        )
    return hub_request_error(err, f"vector pack {at}", endpoint)


def hub_request_error(err: Exception, what: str, endpoint: str | None) -> Exception:
    """A named :class:`HubError` for a failed HTTP exchange with the Hub (status, connection, timeout)."""
    from huggingface_hub.errors import HfHubHTTPError

    hub_name = endpoint or "the Hub"
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None) if isinstance(err, HfHubHTTPError) else None
    server_message = getattr(err, "server_message", None)
    detail = " ".join(str(server_message or err).split())[:200] or type(err).__name__
    if status in (401, 403):
        return HubAuthError(
            f"{what}: {hub_name} refused the request with HTTP {status} ({detail}): the token is invalid or has "
            "no access; pass a valid token= (or run `hf auth login`)"
        )
    if status is not None and (status >= 500 or status == 429):
        return HubServerError(f"{what}: {hub_name} answered HTTP {status} ({detail}); retry later")
    if status is not None:
        return HubError(f"{what}: {hub_name} answered HTTP {status} ({detail})")
    name = type(err).__name__
    if "Timeout" in name:
        return HubTimeoutError(f"{what}: a request to {hub_name} timed out ({detail})")
    return HubError(f"{what}: {hub_name} could not be reached ({name}: {detail})")


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
    timeout_s: float | None = None,
) -> CommitInfo:
    """Create the repo if needed, write the pack with ``save(folder)`` into a temporary folder, commit it once.

    All pack files go in a single ``create_commit`` (``upload_folder`` may split a large folder into
    several commits when ``hf_xet`` is installed), so a pack is never half-pushed.

    Args:
        save: writes the pack files into the folder it is given (``VectorPack.save_pretrained``).
        repo_id, private, token, revision, commit_message, endpoint, create_pr, timeout_s: as
            :meth:`~cmrm_guard.vectors.pack.VectorPack.push_to_hub`.

    Returns:
        The commit.

    Raises:
        HubTimeoutError: the deadline passed (the commit may still land: check the repo before retrying).
        HubAuthError / HubServerError / HubError: the Hub refused the push or could not be reached.
    """
    deadline = _Deadline(hub_timeout(timeout_s), f"pushing a vector pack to {repo_id!r}")
    # not huggingface_hub's SoftTemporaryDirectory: it skips its cleanup when the body raises (a refused push)
    with tempfile.TemporaryDirectory(prefix="cmrm-pack-", ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp)
        save(folder)
        try:
            return deadline.run(
                lambda: _commit_pack(
                    folder, repo_id, private, token, revision, commit_message, endpoint, create_pr
                )
            )
        except CMRMError:
            raise
        except Exception as err:
            from huggingface_hub.errors import HFValidationError

            if isinstance(err, HFValidationError):
                raise PackError(f"{repo_id!r} is not a Hub repo id ('namespace/name')") from err
            raise hub_request_error(err, f"pushing a vector pack to {repo_id!r}", endpoint) from err


def _commit_pack(
    folder: Path,
    repo_id: str,
    private: bool | None,
    token: str | bool | None,
    revision: str | None,
    commit_message: str,
    endpoint: str | None,
    create_pr: bool,
) -> CommitInfo:
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=package_version())
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and not create_pr and revision != "main":
        api.create_branch(repo_url.repo_id, branch=revision, exist_ok=True)
    operations = [
        CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
        for path in sorted(folder.iterdir())
        if path.is_file()
    ]
    return api.create_commit(
        repo_url.repo_id, operations=operations, commit_message=commit_message,
        revision=revision, create_pr=create_pr,
    )  # fmt: skip
