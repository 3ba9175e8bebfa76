"""Data: sources (where samples come from), shards (the format on disk), decoding, augmentation
pipelines, the loader, and the policy for corrupt data."""
