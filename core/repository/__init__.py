"""The repository format: packs, index, manifests, keys, locks (see FORMAT.md)."""
