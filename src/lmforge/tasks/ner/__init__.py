"""Named-entity recognition: CoNLL files (conll.py), word-to-sub-token alignment (encoding.py), tagger
fine-tuning with entity-level selection (run.py), and texts to entities with character offsets (pipeline.py)."""
