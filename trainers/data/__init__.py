"""Datasets on the training side: the shard format (format.py, shared with the writer in
pipelines.dataset), where a dataset's bytes live (storage.py: a folder or S3) and the readers
(reader.py: the training stream and evaluation's ordered chunks)."""
