"""Shards: writing, reading, decoding, and the policy for corrupt data."""
