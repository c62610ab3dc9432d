"""The theory, runnable: NumPy implementations, written from the equations, of the pieces a language model is
made of, each with a hand-written backward pass. Readable first; nothing here is meant to be fast.

    layers.py          embedding, affine, softmax, softmax cross-entropy, layer norm, GELU
    recurrent.py       RNN, LSTM and GRU cells unrolled over a sequence; backpropagation through time
    attention.py       scaled dot-product attention with a causal mask, multi-head attention, a Transformer block
    gradcheck.py       relative error and finite-difference gradients
    train_char_lstm.py a pure-NumPy training run: a character LSTM on one paragraph

Everything is float64 and imports only NumPy. tests/reference checks every forward pass against PyTorch and
every backward pass against PyTorch autograd; docs/theory.md puts the equations next to the functions.
"""
