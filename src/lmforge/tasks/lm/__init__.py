"""Language modelling as a task: pretraining on token shards (run.py) and fitting the statistical n-gram
(statistical.py). Scoring a model on text lives in eval/perplexity.py; generating in generate/ and lm.py."""
