"""Evaluation (an engine): pure scores and their reports. Perplexity and bits per byte (perplexity.py), masked-LM
accuracy, classification P/R/F1/ROC-AUC with confusion plots, entity-level NER scores, BLEU/chrF/ROUGE, and the
unigram baseline. Task-level evaluation on files lives with each task (tasks/<task>/pipeline.py)."""
