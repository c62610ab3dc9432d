"""The label convention every loss shares: a target of IGNORE_INDEX is not scored (PyTorch's cross_entropy default).

Masked-LM labels, the prompt half of a prompted pair, a chat's user turns and the sub-tokens after a word's first all
carry it.
"""

IGNORE_INDEX = -100
