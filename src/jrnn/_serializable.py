"""jrnn's NamedTuples of arrays, registered for ``jax.export`` serialization.

JAX flattens a NamedTuple like any tuple, but ``Exported.serialize()`` of a
function that takes or returns one (a cell's params, an LSTM's state, a
training state) needs the type registered under a stable name.
"""

from __future__ import annotations

import jax


def serializable(cls):
    """Class decorator: registers NamedTuple ``cls`` as ``"jrnn.<Name>"`` with
    ``jax.export.register_namedtuple_serialization``."""
    return jax.export.register_namedtuple_serialization(cls, serialized_name=f"jrnn.{cls.__name__}")
