"""Data preparation: reading corpora, cleaning, deduplication, segmentation and memory-mapped token shards."""
