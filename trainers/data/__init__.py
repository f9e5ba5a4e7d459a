"""Dataset format and the shard reader used by training."""
