"""What ``vectors=`` accepts, turned into a validated :class:`~cmrm_guard.vectors.pack.VectorPack`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeAlias

from torch import Tensor

from cmrm_guard.errors import VectorError
from cmrm_guard.hooks import check_layer_indices
from cmrm_guard.vectors.pack import PackMeta, VectorPack

VectorsLike: TypeAlias = VectorPack | str | Path | Mapping[int, Tensor] | Tensor
"""What ``vectors=`` of :class:`~cmrm_guard.SteeredVLM` and ``attach`` accept: a
:class:`~cmrm_guard.vectors.VectorPack`, a pack folder (a ``Path``, or a string) or Hub repo id, a
``{layer: (hidden,) tensor}`` mapping, or a ``(num_layers, hidden)`` tensor."""


def as_vector_pack(
    vectors: VectorsLike,
    *,
    model_type: str,
    hidden_size: int,
    num_layers: int,
    model_id: str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
) -> VectorPack:
    """A pack from a ``VectorPack``, a pack folder or Hub repo id, a ``{layer: (hidden,) tensor}``
    dict or a ``(num_layers, hidden)`` tensor, checked against the model it will steer.

    Raises:
        VectorError / LayerIndexError: in-memory vectors of the wrong shape, layers or values.
        PackError / PackMismatchError: a pack that cannot be loaded or does not fit the model.
    """
    if isinstance(vectors, VectorPack):
        pack = vectors
    elif isinstance(vectors, str | Path):
        pack = VectorPack.from_pretrained(vectors, revision=revision, token=token)
    elif isinstance(vectors, Tensor | Mapping):
        shifts = vectors_as_dict(vectors, hidden_size=hidden_size, num_layers=num_layers)
        meta = PackMeta(
            base_model=model_id,
            model_type=model_type,
            hidden_size=hidden_size,
            num_layers=num_layers,
            layer_indices=sorted(shifts),
        )
        pack = VectorPack(shifts, meta)
    else:
        raise VectorError(
            "vectors must be a VectorPack, a pack directory or Hub repo id, a {layer: tensor} "
            f"dict or a (num_layers, hidden) tensor; got {type(vectors).__name__}"
        )
    pack.validate_for(
        model_type=model_type, hidden_size=hidden_size, num_layers=num_layers, model_id=model_id
    )
    return pack


def vectors_as_dict(
    vectors: Mapping[int, Tensor] | Tensor, *, hidden_size: int, num_layers: int
) -> dict[int, Tensor]:
    """``{layer: (hidden,) tensor}`` from a dict or a ``(num_layers, hidden)`` tensor, shapes checked."""
    if isinstance(vectors, Tensor):
        if vectors.dim() != 2 or tuple(vectors.shape) != (num_layers, hidden_size):
            raise VectorError(
                f"a vectors tensor must have shape (num_layers, hidden) = ({num_layers}, {hidden_size}), "
                f"got {tuple(vectors.shape)}"
            )
        return {i: vectors[i] for i in range(num_layers)}
    out: dict[int, Tensor] = {}
    check_layer_indices(list(vectors), num_layers)
    for index, vector in vectors.items():
        if not isinstance(vector, Tensor) or tuple(vector.shape) != (hidden_size,):
            got = tuple(getattr(vector, "shape", ())) or type(vector).__name__
            raise VectorError(
                f"vector for layer {index} must have shape ({hidden_size},) (the decoder's hidden size), "
                f"got {got}"
            )
        out[int(index)] = vector
    return out
