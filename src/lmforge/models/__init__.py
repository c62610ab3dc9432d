"""Model families (core): layers, GPT/Llama-style decoders, BERT encoders, encoder-decoders, RNN/LSTM/GRU LMs, the
n-gram, task heads (classifier, tagger, span QA), the quantized module format and `eval_mode`. Every model is built
from its config by one registry (`registry.build_model`)."""
