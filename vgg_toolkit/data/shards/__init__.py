"""The shard format on disk: records, the manifest, writing (``vggtk shards create``), reading, checks."""
