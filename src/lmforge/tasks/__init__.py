"""Task-level use of models: labelled examples, input encoding, pipelines."""
