"""Vector packs: per-layer CMRM shift vectors and the metadata that says where they fit.

A pack on disk (a folder or a Hub repo) is three files and nothing else:

- ``shifts.safetensors``: one 1-D tensor ``layers.{i}.shift`` of shape ``(hidden_size,)`` per layer;
- ``pack_config.json``: :class:`PackMeta`, including the sha256 of ``shifts.safetensors``;
- ``README.md``: the model card (see :mod:`cmrm_guard.vectors.hub`).

Loading never unpickles anything: tensors are read with safetensors only, and a pack that is
incomplete, altered, newer than this library or carrying foreign files is refused with a
:class:`~cmrm_guard.errors.PackError` naming the file and the way out. So is a pack whose
``pack_config.json`` has no ``shifts_sha256``, a value of the wrong JSON type (no coercion), nesting
deeper than :data:`MAX_CONFIG_DEPTH` or a file over its size limit (``hub.MAX_FILE_BYTES``); a symbolic
link leading out of the folder; a tensor name other than ``layers.<i>.shift`` (ASCII digits, no leading
zeros); or a dtype outside :data:`SHIFT_DTYPES`. Provenance (``meta.repo_id`` / ``meta.revision``) is set
only by a Hub download, never read from a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cmrm_guard import package_version
from cmrm_guard.errors import CMRMWarning, LayerIndexError, PackError, PackMismatchError, VectorError
from cmrm_guard.vectors import hub

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

FORMAT_VERSION = "1.0"
"""Pack format, ``major.minor``: a newer minor only adds keys (loaded with a warning), a newer major is refused."""

CONFIG_NAME = "pack_config.json"
SHIFTS_NAME = "shifts.safetensors"
CARD_NAME = "README.md"
PACK_FILES = (CONFIG_NAME, SHIFTS_NAME, CARD_NAME)
_TOLERATED_FILES = frozenset({".gitattributes"})  # every Hub repo starts with one
_TOLERATED_DIRS = frozenset({".cache"})  # `hf download --local-dir` keeps its metadata there
_SHIFT_KEY = re.compile(
    r"layers\.(0|[1-9][0-9]*)\.shift"
)  # ASCII digits, no leading zeros: one name per layer
_VERSION = re.compile(r"([0-9]+)\.([0-9]+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_CONFIG_DEPTH = 16
"""Deepest nesting of objects/arrays accepted in ``pack_config.json``."""
SHIFT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
"""Tensor dtypes a pack may hold (float8 and other dtypes are refused: their NaN/inf checks are not defined)."""
PROVENANCE_KEYS = frozenset({"repo_id", "revision"})
"""Keys of :class:`PackMeta` that only a Hub download sets; a ``pack_config.json`` cannot claim them."""


def shift_key(layer: int) -> str:
    """Name of layer ``layer``'s tensor in ``shifts.safetensors``."""
    return f"layers.{layer}.shift"


def _parse_version(version: str) -> tuple[int, int]:
    match = _VERSION.fullmatch(version)
    if match is None:
        raise ValueError(
            f"format_version {version!r} is not 'major.minor' (this cmrm-guard writes {FORMAT_VERSION!r})"
        )
    return int(match[1]), int(match[2])


def _newer_major_message(version: str) -> str:
    return (
        f"pack format_version {version!r} is newer than this cmrm-guard ({package_version()}) can read "
        f"(format {FORMAT_VERSION}): upgrade cmrm-guard (`pip install -U cmrm-guard`)"
    )


class PackMeta(BaseModel):
    """Metadata of a vector pack, stored as ``pack_config.json``.

    Unknown keys (written by a newer minor format version) are kept in ``model_extra``; loading a
    pack reports them in a warning. Types are strict: ``"64"``, ``64.0`` or ``true`` is not an int.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    format_version: str = FORMAT_VERSION
    """Pack format, ``major.minor``."""
    base_model: str | None = None
    """Hub id (or path) of the model the pack was calibrated on."""
    base_model_revision: str | None = None
    """Revision of ``base_model`` used for calibration."""
    model_type: str
    """``config.model_type`` of that model, e.g. ``"llava"``."""
    hidden_size: int = Field(gt=0)
    """Hidden size of the language decoder (the text config's ``hidden_size``)."""
    num_layers: int = Field(gt=0)
    """Number of decoder layers of that model."""
    layer_indices: list[int] = Field(min_length=1)
    """Decoder layers that carry a shift: sorted, unique, each in ``[0, num_layers)``."""
    estimator: Literal["mean", "pc1"] = "mean"
    """How per-sample differences were reduced: their mean, or their first principal component."""
    corruption: Literal["blank", "noise"] = "blank"
    """Uninformative image of the corrupted twin during calibration."""
    alpha: float = 1.0
    """Default strength to apply the pack with (finite)."""
    application: Literal["every_layer", "increment"] = "increment"
    """Default form: add ``v^l`` at every layer, or the increment ``v^l - v^(l-1)``."""
    positions: Literal["last", "all"] = "last"
    """Default prompt positions steered."""
    step_scope: Literal["all_steps", "prefill_only"] = "all_steps"
    """Default decoding steps steered."""
    num_samples: int = Field(default=0, ge=0)
    """Number of calibration samples."""
    calibration_hash: str | None = None
    """sha256 of the calibration data."""
    dtype: str = "float32"
    """dtype of the tensors in ``shifts.safetensors``."""
    cmrm_guard_version: str = Field(default_factory=package_version)
    """cmrm-guard version that made the pack."""
    shifts_sha256: str | None = None
    """sha256 of ``shifts.safetensors``; filled by :meth:`VectorPack.save_pretrained`, checked on load."""
    evaluation: str | None = None
    """Optional Markdown table of evaluation results, shown in the model card."""
    repo_id: str | None = None
    """Hub repo the pack was downloaded from; set only by a Hub download (never saved, never read from a file)."""
    revision: str | None = None
    """Resolved 40-hex commit sha of that download; set only by a Hub download (never saved or read)."""

    @field_validator("format_version")
    @classmethod
    def _known_major(cls, value: str) -> str:
        if _parse_version(value)[0] > _parse_version(FORMAT_VERSION)[0]:
            raise ValueError(_newer_major_message(value))
        return value

    @field_validator("shifts_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and _SHA256.fullmatch(value.lower()) is None:
            raise ValueError(f"shifts_sha256 {value[:80]!r} is not a 64-hex-digit sha256")
        return value

    @field_validator("alpha")
    @classmethod
    def _finite_alpha(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError(
                f"alpha must be a finite number >= 0, got {value} (a pack inverts by negating its shifts: -pack)"
            )
        return value

    @model_validator(mode="after")
    def _check_layers(self) -> PackMeta:
        layers = self.layer_indices
        if len(set(layers)) != len(layers):
            raise ValueError(f"layer_indices has duplicates: {layers}")
        if layers != sorted(layers):
            raise ValueError(f"layer_indices must be sorted: {layers} (use {sorted(layers)})")
        outside = [i for i in layers if not 0 <= i < self.num_layers]
        if outside:
            raise ValueError(
                f"layer_indices {outside} outside [0, {self.num_layers}) (num_layers={self.num_layers})"
            )
        return self


def _check_shifts(shifts: Mapping[int, torch.Tensor], meta: PackMeta) -> None:
    """Raise :class:`VectorError` unless ``shifts`` has exactly ``meta``'s layers, shapes and finite values."""
    bad_keys = [k for k in shifts if isinstance(k, bool) or not isinstance(k, int)]
    if bad_keys:
        raise VectorError(f"shift keys must be int layer indices, got {bad_keys!r}")
    missing = sorted(set(meta.layer_indices) - set(shifts))
    extra = sorted(set(shifts) - set(meta.layer_indices))
    if missing or extra:
        raise VectorError(
            f"shift layers {sorted(shifts)} do not match layer_indices {meta.layer_indices}"
            f" (missing {missing}, unexpected {extra}): give one shift per listed layer"
        )
    for layer, tensor in shifts.items():
        if not isinstance(tensor, torch.Tensor):
            raise VectorError(f"layer {layer}: shift is a {type(tensor).__name__}, expected a torch.Tensor")
        if not tensor.is_floating_point():
            raise VectorError(f"layer {layer}: shift has dtype {tensor.dtype}, expected a floating dtype")
        if tensor.dtype not in SHIFT_DTYPES:
            names = ", ".join(str(d).removeprefix("torch.") for d in SHIFT_DTYPES)
            raise VectorError(
                f"layer {layer}: shift has dtype {str(tensor.dtype).removeprefix('torch.')}, which packs do not"
                f" support; use one of {names}"
            )
        if tensor.shape != (meta.hidden_size,):
            raise VectorError(
                f"layer {layer}: shift has shape {tuple(tensor.shape)}, expected ({meta.hidden_size},) (hidden_size)"
            )
        n_nan, n_inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
        if n_nan or n_inf:
            raise VectorError(
                f"layer {layer}: shift has {n_nan} NaN and {n_inf} inf values; shifts must be finite"
            )


class VectorPack:
    """Per-layer CMRM shift vectors + metadata. A value object: methods return new packs.

    Args:
        shifts: ``{layer: tensor of shape (hidden_size,)}``, one per ``meta.layer_indices``, finite.
        meta: the pack's metadata.

    Raises:
        VectorError: a layer is missing or extra, a tensor has the wrong shape, or NaN/inf.

    Example:
        >>> pack = VectorPack.from_pretrained("org/llava-cmrm")
        >>> (pack * 0.5).save_pretrained("llava-cmrm-half")
    """

    shifts: dict[int, torch.Tensor]
    meta: PackMeta

    def __init__(self, shifts: Mapping[int, torch.Tensor], meta: PackMeta) -> None:
        if not isinstance(meta, PackMeta):
            raise TypeError(f"meta must be a PackMeta, got {type(meta).__name__}")
        if any(isinstance(k, Integral) and not isinstance(k, bool) for k in shifts):
            shifts = {
                int(k) if isinstance(k, Integral) and not isinstance(k, bool) else k: v
                for k, v in shifts.items()
            }
        _check_shifts(shifts, meta)  # on the given tensors: names the caller's dtype and shape
        copies = {
            i: shifts[i].detach().to(device="cpu", dtype=torch.float32, copy=True) for i in meta.layer_indices
        }
        _check_shifts(copies, meta)  # float64 values beyond float32's range became inf
        self.shifts = copies
        self.meta = meta.model_copy(deep=True, update={"dtype": "float32"})

    @classmethod
    def from_calibration(cls, svlm: Any, samples: Any, **kwargs: Any) -> VectorPack:
        """Calibrate a pack for ``svlm``'s model: :func:`cmrm_guard.calibrate` (same arguments).

        Example:
            >>> pack = VectorPack.from_calibration(svlm, samples, estimator="mean")
        """
        from cmrm_guard.vectors.calibrate import calibrate

        return calibrate(svlm, samples, **kwargs)

    @classmethod
    def _trusted(cls, shifts: dict[int, torch.Tensor], meta: PackMeta) -> VectorPack:
        """Build from checked tensors, keeping their dtype and device (``to()``, arithmetic)."""
        _check_shifts(shifts, meta)
        pack = cls.__new__(cls)
        pack.shifts = {i: shifts[i] for i in meta.layer_indices}
        pack.meta = meta
        return pack

    # -- views --------------------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        """Hidden size of the language decoder the pack was made for."""
        return self.meta.hidden_size

    @property
    def layer_indices(self) -> list[int]:
        """Sorted decoder layers that carry a shift."""
        return list(self.meta.layer_indices)

    @property
    def model_type(self) -> str:
        """``config.model_type`` of the model the pack was made for."""
        return self.meta.model_type

    @property
    def num_layers(self) -> int:
        """Number of decoder layers of the model the pack was made for."""
        return self.meta.num_layers

    def __getitem__(self, layer: int) -> torch.Tensor:
        """The shift of decoder layer ``layer``, shape ``(hidden_size,)``."""
        if layer not in self.shifts:
            raise LayerIndexError(f"layer {layer} has no shift in this pack; layers: {self.layer_indices}")
        return self.shifts[layer]

    def layer_norms(self) -> dict[int, float]:
        """L2 norm of each layer's shift."""
        return {i: float(torch.linalg.vector_norm(t.float())) for i, t in self.shifts.items()}

    def __repr__(self) -> str:
        layers = self.layer_indices
        shown = (
            f"{layers}"
            if len(layers) <= 6
            else f"[{layers[0]}, {layers[1]}, ..., {layers[-1]}] ({len(layers)})"
        )
        norms = self.layer_norms().values()
        source = f", repo_id={self.meta.repo_id!r}" if self.meta.repo_id else ""
        return (
            f"VectorPack(model_type={self.model_type!r}, layers={shown}, hidden_size={self.hidden_size}, "
            f"norms={min(norms):.3g}..{max(norms):.3g}{source})"
        )

    def validate_for(
        self, *, model_type: str, hidden_size: int, num_layers: int, model_id: str | None = None
    ) -> None:
        """Raise :class:`PackMismatchError` unless the pack fits a model of this type and shape.

        Args:
            model_type: the model's ``config.model_type``.
            hidden_size: hidden size of its language decoder.
            num_layers: number of its decoder layers.
            model_id: its name, for the message.
        """
        problems = []
        if model_type != self.model_type:
            problems.append(f"model_type {self.model_type!r} (model has {model_type!r})")
        if hidden_size != self.hidden_size:
            problems.append(f"hidden_size {self.hidden_size} (model has {hidden_size})")
        if num_layers != self.num_layers:
            problems.append(f"{self.num_layers} decoder layers (num_layers; model has {num_layers})")
        if problems:
            name = self.meta.repo_id or self.meta.base_model or "vector pack"
            model = model_id or model_type
            raise PackMismatchError(
                f"{name!r} does not fit model {model!r}: it was calibrated for "
                + ", ".join(problems)
                + f". Calibrate a pack for this model (`cmrm-guard calibrate {model_id or '<model id>'}`)"
                " or pick one made for it"
            )

    # -- value operations ---------------------------------------------------------------------------------
    def _derived(self, shifts: dict[int, torch.Tensor], **changes: Any) -> VectorPack:
        """A new pack from changed tensors: checksum and Hub provenance no longer describe it."""
        meta = self.meta.model_copy(
            deep=True, update={"shifts_sha256": None, "repo_id": None, "revision": None, **changes}
        )
        return type(self)._trusted(shifts, meta)

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> VectorPack:
        """A copy with tensors of ``dtype`` on ``device`` (``meta.dtype`` follows)."""
        if dtype is not None and not dtype.is_floating_point:
            raise VectorError(f"shifts must stay floating point, got dtype {dtype}")
        shifts = {i: t.to(device=device, dtype=dtype, copy=True) for i, t in self.shifts.items()}
        new_dtype = str(next(iter(shifts.values())).dtype).removeprefix("torch.")
        if new_dtype == self.meta.dtype:
            return type(self)._trusted(shifts, self.meta.model_copy(deep=True))
        return self._derived(shifts, dtype=new_dtype)

    def __mul__(self, k: float) -> VectorPack:
        """A copy with every shift scaled by ``k`` (``pack * 0.3`` for an alpha sweep)."""
        if isinstance(k, bool) or not isinstance(k, Real):
            return NotImplemented
        if not math.isfinite(k):
            raise VectorError(f"cannot scale a pack by {k}: the factor must be finite")
        return self._derived({i: t * float(k) for i, t in self.shifts.items()})

    __rmul__ = __mul__

    def __neg__(self) -> VectorPack:
        """A copy with every shift negated."""
        return self._derived({i: -t for i, t in self.shifts.items()})

    def __add__(self, other: VectorPack) -> VectorPack:
        """Layer-wise sum of two packs made for the same model and layers (metadata from ``self``)."""
        if not isinstance(other, VectorPack):
            return NotImplemented
        mine = (self.model_type, self.hidden_size, self.num_layers)
        theirs = (other.model_type, other.hidden_size, other.num_layers)
        if mine != theirs:
            raise PackMismatchError(
                f"cannot add packs made for different models: (model_type, hidden_size, num_layers) {mine} vs {theirs}"
            )
        if self.layer_indices != other.layer_indices:
            raise VectorError(
                f"cannot add packs with different layers: {self.layer_indices} vs {other.layer_indices}"
            )
        return self._derived({i: t + other.shifts[i].to(t.device) for i, t in self.shifts.items()})

    def __sub__(self, other: VectorPack) -> VectorPack:
        """Layer-wise difference, ``self + (-other)``."""
        if not isinstance(other, VectorPack):
            return NotImplemented
        return self + (-other)

    # -- files --------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the pack (``shifts.safetensors``, ``pack_config.json``, ``README.md``) into a folder.

        The folder is created if needed; it may already hold an older copy of a pack, but no other files
        (they would make the folder a pack that does not load). Each file is written to a temporary name
        and then renamed over its target, so a symbolic link in the folder is replaced, never written through.

        Returns:
            The folder's path.
        """
        return self._write(Path(save_directory))

    def _write(self, folder: Path, *, repo_id: str | None = None) -> Path:
        """:meth:`save_pretrained`, with ``repo_id`` shown in the card's usage snippet."""
        from safetensors.torch import save as save_safetensors

        folder.mkdir(parents=True, exist_ok=True)
        foreign = _unexpected_entries(folder)
        if foreign:
            raise PackError(
                f"cannot save a vector pack into {folder}: it holds other files ({', '.join(foreign)}) that would"
                " stop it loading; pick an empty or new folder"
            )
        tensors = {shift_key(i): t.detach().to("cpu").contiguous() for i, t in self.shifts.items()}
        data = save_safetensors(tensors, metadata={"format": "pt"})
        dtype = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
        meta = self.meta.model_copy(update={"shifts_sha256": _sha256(data), "dtype": dtype})
        config = meta.model_dump(mode="json", exclude=set(PROVENANCE_KEYS))
        card = hub.render_model_card(meta, repo_id=repo_id)
        _replace_file(folder / SHIFTS_NAME, data)
        _replace_file(folder / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
        _replace_file(folder / CARD_NAME, card.encode("utf-8"))
        return folder

    @classmethod
    def from_pretrained(
        cls,
        pack_id_or_path: str | Path,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        endpoint: str | None = None,
        timeout_s: float | None = None,
    ) -> VectorPack:
        """Load a pack from a local folder or a Hub repo.

        Which one is decided from the argument alone, never by what happens to exist on disk when a
        revision is pinned:

        - a :class:`~pathlib.Path`, or a string that is explicitly a path (starts with ``/``, ``./``,
          ``../`` or ``~``, or is ``.``): a local folder; ``revision`` is then refused;
        - any other string with a ``revision``: a Hub repo id, always (a folder of that name is ignored);
        - any other string without a ``revision``: the folder if one exists at that path, else a Hub repo id.

        Use :meth:`from_hub` to name a Hub repo whatever the local disk holds.

        Args:
            pack_id_or_path: a folder written by :meth:`save_pretrained`, or a Hub repo id.
            revision: branch, tag or commit sha on the Hub.
            token: Hub token; ``False`` sends none; ``None`` uses the saved one.
            cache_dir: Hub cache folder (default: ``HF_HUB_CACHE``).
            local_files_only: use the Hub cache only, no network (as ``HF_HUB_OFFLINE=1``).
            endpoint: Hub endpoint (default: ``HF_ENDPOINT``).
            timeout_s: total deadline of the Hub download in seconds (default: ``$CMRM_GUARD_HUB_TIMEOUT_S``,
                else 120).

        Returns:
            The pack. Only a Hub download sets ``meta.repo_id`` and ``meta.revision`` (the resolved commit);
            see :attr:`provenance`.

        Raises:
            PackError: the pack is missing, incomplete, altered, or of a newer format (and the Hub errors
                of :meth:`from_hub`).

        Example:
            >>> pack = VectorPack.from_pretrained("org/llava-cmrm", revision="v1")
            >>> pack.meta.revision  # the commit it resolved to
        """
        explicit = isinstance(pack_id_or_path, Path) or _is_explicit_path(str(pack_id_or_path))
        if explicit:
            if revision is not None:
                raise PackError(
                    f"revision={revision!r} was given for the local folder {str(pack_id_or_path)!r}: a revision"
                    " applies to Hub repo ids only; drop it, or pass the Hub id (VectorPack.from_hub)"
                )
            return cls._load_local(Path(pack_id_or_path).expanduser())
        if revision is None and Path(str(pack_id_or_path)).expanduser().is_dir():
            return cls._load_local(Path(str(pack_id_or_path)).expanduser())
        return cls.from_hub(
            str(pack_id_or_path), revision=revision, token=token, cache_dir=cache_dir,
            local_files_only=local_files_only, endpoint=endpoint, timeout_s=timeout_s,
        )  # fmt: skip

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        endpoint: str | None = None,
        timeout_s: float | None = None,
    ) -> VectorPack:
        """Download (or find in the Hub cache) the pack of a Hub repo; a local folder is never consulted.

        Only the pack files are downloaded, after the repo listing shows no foreign file and no file over
        its size limit; the whole download has one total deadline. Arguments as :meth:`from_pretrained`.

        Raises:
            PackNotFoundError: no such repo or revision (or private without a valid token).
            PackError: a foreign, oversized or invalid pack, or not cached while offline.
            HubTimeoutError: the deadline passed. HubAuthError: the token was refused (401/403).
            HubServerError: the Hub answered 5xx/429. HubError: the Hub could not be reached.
        """
        folder, commit = hub.download_pack(
            repo_id, revision=revision, token=token, cache_dir=cache_dir,
            local_files_only=local_files_only, endpoint=endpoint, timeout_s=timeout_s,
        )  # fmt: skip
        blobs = folder.parent.parent / "blobs"  # the cache's snapshot files link into the repo's blob store
        pack = cls._load_directory(
            folder, source=f"{repo_id}@{commit or revision or 'main'}", links_into=blobs
        )
        pack.meta = pack.meta.model_copy(update={"repo_id": repo_id, "revision": commit})
        return pack

    @classmethod
    def _load_local(cls, path: Path) -> VectorPack:
        if path.is_dir():
            return cls._load_directory(path)
        if path.exists():
            raise PackError(f"{path} is a file; a vector pack is a folder holding {', '.join(PACK_FILES)}")
        raise PackError(f"vector pack folder {str(path)!r} does not exist")

    @property
    def provenance(self) -> str:
        """Where the pack verifiably came from: ``"<repo_id>@<commit sha>"`` for a Hub download, else
        ``"local path"`` (a folder or in-memory tensors; what a folder's files claim is not provenance)."""
        if self.meta.repo_id and self.meta.revision:
            return f"{self.meta.repo_id}@{self.meta.revision}"
        return "local path"

    def push_to_hub(
        self,
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
        """Upload the pack to a Hub repo (created if needed) in one commit.

        Args:
            repo_id: ``namespace/name``.
            private: visibility of a new repo (an existing repo keeps its own).
            token: Hub token with write access; ``None`` uses the saved one.
            revision: branch to commit to (created from ``main`` if missing); default ``main``.
            commit_message: the commit's summary.
            endpoint: Hub endpoint (default: ``HF_ENDPOINT``).
            create_pr: open a pull request instead of committing to the branch.
            timeout_s: total deadline of the upload in seconds (default: ``$CMRM_GUARD_HUB_TIMEOUT_S``, else 120).

        Returns:
            The commit (a ``str`` URL with ``.oid``, ``.pr_url``).

        Raises:
            HubAuthError: the token was refused or has no write access (401/403).
            HubServerError / HubTimeoutError / HubError: a server error, the deadline, no connection.

        Example:
            >>> pack.push_to_hub("me/llava-cmrm", private=True)
        """
        return hub.upload_pack(
            lambda folder: self._write(folder, repo_id=repo_id),
            repo_id,
            private=private,
            token=token,
            revision=revision,
            commit_message=commit_message,
            endpoint=endpoint,
            create_pr=create_pr,
            timeout_s=timeout_s,
        )

    @classmethod
    def _load_directory(
        cls, folder: Path, *, source: str | None = None, links_into: Path | None = None
    ) -> VectorPack:
        """Load and check a pack folder; every refusal is a :class:`PackError` naming ``source``.

        A symbolic link is followed only when it stays inside ``folder`` (or inside ``links_into``: the
        Hub cache's blob store, for a cache snapshot).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        where = source or str(folder)
        foreign = _unexpected_entries(folder)
        if foreign:
            raise PackError(
                f"vector pack {where} holds unexpected files: {', '.join(foreign)}. A pack holds only "
                f"{', '.join(PACK_FILES)}; remove the others (no code or pickle is ever loaded from a pack)"
            )
        roots = [folder.resolve()] + ([links_into.resolve()] if links_into is not None else [])
        for entry in sorted(folder.iterdir()):
            if entry.is_symlink():
                target = entry.resolve()
                if not any(target.is_relative_to(root) for root in roots):
                    raise PackError(
                        f"vector pack {where}: {entry.name} is a symbolic link to {target}, outside the pack"
                        " folder; copy the file into the folder instead"
                    )
        for name in (CONFIG_NAME, SHIFTS_NAME):
            if not (folder / name).is_file():
                raise PackError(
                    f"vector pack {where} has no {name}: it is incomplete; save or download it again"
                )

        raw = _parse_config(_read_capped(folder / CONFIG_NAME, where), where)
        claimed = sorted(PROVENANCE_KEYS & set(raw))
        if claimed:
            warnings.warn(
                f"vector pack {where}: {CONFIG_NAME} claims {', '.join(claimed)}; ignored (only a Hub download"
                " sets a pack's provenance)",
                CMRMWarning,
                stacklevel=3,
            )
            raw = {k: v for k, v in raw.items() if k not in PROVENANCE_KEYS}
        version = raw.get("format_version", FORMAT_VERSION)
        try:
            newer = _parse_version(str(version))[0] > _parse_version(FORMAT_VERSION)[0]
        except ValueError as err:
            raise PackError(f"vector pack {where}: {err}") from err
        if newer:
            raise PackError(f"vector pack {where}: {_newer_major_message(str(version))}")
        try:
            meta = PackMeta.model_validate(raw)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
                for e in err.errors()
            )
            raise PackError(f"vector pack {where}: invalid {CONFIG_NAME}: {problems}") from err
        if meta.model_extra:
            warnings.warn(
                f"vector pack {where} (format {meta.format_version}) has keys this cmrm-guard ({package_version()},"
                f" format {FORMAT_VERSION}) does not know: {', '.join(sorted(meta.model_extra))}; they are kept but"
                " not used. Upgrade cmrm-guard to use them.",
                CMRMWarning,
                stacklevel=3,
            )
        if meta.shifts_sha256 is None:
            raise PackError(
                f"vector pack {where}: {CONFIG_NAME} has no shifts_sha256, so its integrity cannot be checked;"
                " save it again with VectorPack.save_pretrained (which records it)"
            )

        data = _read_capped(folder / SHIFTS_NAME, where)  # hashed and parsed from the same bytes
        digest = _sha256(data)
        if digest != meta.shifts_sha256.lower():
            raise PackError(
                f"vector pack {where}: {SHIFTS_NAME} has sha256 {digest}, but {CONFIG_NAME} expects "
                f"{meta.shifts_sha256}: the file is corrupt or was changed after saving; download or save it again"
            )
        try:
            tensors = load_safetensors(data)  # safetensors only: never torch.load / pickle
        except (SafetensorError, ValueError, TypeError, RuntimeError) as err:
            raise PackError(
                f"vector pack {where}: {SHIFTS_NAME} is not a valid safetensors file ({err})"
            ) from err

        shifts: dict[int, torch.Tensor] = {}
        for key, tensor in tensors.items():
            match = _SHIFT_KEY.fullmatch(key)
            if match is None:
                raise PackError(
                    f"vector pack {where}: {SHIFTS_NAME} has an unexpected tensor {key[:80]!r}; expected"
                    " 'layers.<i>.shift' (i in ASCII digits, no leading zeros)"
                )
            layer = int(match[1])
            if layer in shifts:
                raise PackError(f"vector pack {where}: {SHIFTS_NAME} has two tensors for layer {layer}")
            shifts[layer] = tensor
        if sorted(shifts) != meta.layer_indices:
            raise PackError(
                f"vector pack {where}: {SHIFTS_NAME} has layers {sorted(shifts)} but {CONFIG_NAME} lists "
                f"layer_indices {meta.layer_indices}; the files do not belong together"
            )
        try:
            return cls(shifts, meta)
        except VectorError as err:
            raise PackError(f"vector pack {where}: {err}") from err


def _is_explicit_path(text: str) -> bool:
    """Whether a string names a local path by its form alone (``/x``, ``./x``, ``../x``, ``~/x``, ``.``)."""
    return (
        text in (".", "..")
        or text.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or (len(text) > 2 and text[1] == ":" and text[2] in "/\\")
    )


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path`` (a link there is replaced)."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_capped(path: Path, where: str) -> bytes:
    """The bytes of a pack file, refused when it is not a regular file or is over its size limit."""
    import stat

    limit = hub.MAX_FILE_BYTES[path.name]
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise PackError(f"vector pack {where}: {path.name} is not a regular file")
        if info.st_size > limit:
            raise PackError(
                f"vector pack {where}: {path.name} is {info.st_size} bytes, over its limit of {limit} bytes"
            )
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as err:
        raise PackError(f"vector pack {where}: cannot read {path.name} ({err.strerror or err})") from err
    if len(data) > limit:
        raise PackError(f"vector pack {where}: {path.name} is over its limit of {limit} bytes")
    return data


def _parse_config(data: bytes, where: str) -> dict[str, Any]:
    """``pack_config.json`` as a dict, refused when not JSON, not an object, or nested too deeply."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise PackError(f"vector pack {where}: {CONFIG_NAME} is not valid JSON ({err})") from err
    except RecursionError:
        raise PackError(
            f"vector pack {where}: {CONFIG_NAME} is nested too deeply (limit {MAX_CONFIG_DEPTH} levels)"
        ) from None
    if not isinstance(raw, dict):
        raise PackError(
            f"vector pack {where}: {CONFIG_NAME} must hold a JSON object, got {type(raw).__name__}"
        )
    stack: list[tuple[Any, int]] = [(raw, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise PackError(
                f"vector pack {where}: {CONFIG_NAME} is nested too deeply (more than {MAX_CONFIG_DEPTH} levels)"
            )
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return raw


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unexpected_entries(folder: Path) -> list[str]:
    """Names in ``folder`` that are neither pack files nor tolerated Hub/cache leftovers, sorted."""
    unexpected = []
    for entry in folder.iterdir():
        name = entry.name
        if name in PACK_FILES and (entry.is_file() or entry.is_symlink()):
            continue
        if (name in _TOLERATED_FILES and entry.is_file()) or (name in _TOLERATED_DIRS and entry.is_dir()):
            continue
        unexpected.append(name + ("/" if entry.is_dir() else ""))
    return sorted(unexpected)
