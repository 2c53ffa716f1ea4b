"""CPU speed-ups: oneDNN convolutions and the passes that route work to them.

`onednn_build` builds and loads the oneDNN kernel (an XLA FFI custom call), `onednn` holds its
numerics (`conv`, with a JVP and a vmap rule), `fusion` rewrites a function's convolutions (and
their bias / residual / ReLU epilogues) to it, `convolutions` puts convolutions in the layout
XLA:CPU runs fastest, `jaxpr` holds the shared jaxpr-interpreter helpers, `autotune` picks the
fastest evaluation batch size by measuring, and `malloc` (opt-in) keeps the buffers XLA:CPU frees
for its next call.
"""

__all__ = ["autotune", "convolutions", "fusion", "jaxpr", "malloc", "onednn", "onednn_build"]
