"""Batch mode: chunks answered by Mistral's Batch API at half the price (see docs/batch.md).

Modules, one job each: `customid` (a line's id, which names its chunk), `jsonl` (request lines
streamed to files on disk, split by size and count), `client` (the files + batch jobs HTTP
client), `submit` (the transport the document job sees: it queues a chunk's line and defers the
chunk), `collect` (poll, download, match lines to chunks, checkpoint). The batch run itself (collect,
submit, wait, assemble) is `pipeline.run.batch_run`. The `batch:` settings are
`pipeline.config.groups.BatchSettings`.
"""
