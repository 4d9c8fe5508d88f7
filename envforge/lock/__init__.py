"""Locking: turn a Resolution into hashed, reproducible lock files (pip requirements, pylock.toml, conda)."""
