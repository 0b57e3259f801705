"""CMRM shift vectors: vector packs (files, Hub) and their calibration."""

from cmrm_guard.vectors.inputs import VectorsLike
from cmrm_guard.vectors.pack import FORMAT_VERSION, PackMeta, VectorPack

__all__ = ["FORMAT_VERSION", "PackMeta", "VectorPack", "VectorsLike"]
