"""jrnn vs torch.nn, Flax nn.RNN, Equinox cells, Keras-on-JAX and Haiku: forward and
forward+backward times, compile time and XLA temporary memory.

    python benchmarks/speed.py                  # C1, C3, C4, C5 for LSTM, GRU, SimpleRNN
    python benchmarks/speed.py --cells lstm --sizes C3 --jsonl results.jsonl
    python benchmarks/speed.py --quick          # smoke run, tiny shapes
"""

import sys

from jrnn.bench import main

if __name__ == "__main__":
    sys.exit(main())
