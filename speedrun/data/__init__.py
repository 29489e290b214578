"""The canonical data: the FineWeb shard format, the streams every submission is fed from, the tiny track's
generated corpus, and getting shards (hub download, tokenising your own text).
"""
