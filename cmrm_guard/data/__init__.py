"""Data files shipped with cmrm-guard (see PROVENANCE.md)."""
