"""A GPT-2-shaped transformer with its parameters sharded over 8 devices (data 2 x model 4).

Default: a reduced model (width 128, 4 blocks, context 32; 0.8 M parameters) that runs in
minutes on a CPU with 8 simulated devices. ``:gpt2`` is GPT-2 small's shape (124 M parameters,
50257-token vocabulary, context 1024, trained on 256-character windows) for a TPU or GPU host;
``:quick`` shrinks everything for a smoke test.
"""

from configs import defaults


def get_config(arg=None):
  if arg in (None, ""):
    return defaults.scale_gpt2()
  if arg == "gpt2":
    return defaults.scale_gpt2(model="gpt2_small", vocab_size=50257, context=256, width=768,
                               depth=12, heads=12, stride=128, batch_size=16, steps=200,
                               train_windows=1024, test_windows=128, eval_batch_size=16,
                               hessian_batch_size=16, learning_rate=3e-4)
  if arg == "quick":
    return defaults.scale_gpt2(context=8, width=16, depth=1, heads=2, stride=8, steps=5,
                               train_windows=32, test_windows=16, x=(-1.0, 1.0, 2),
                               y=(-1.0, 1.0, 2), alphas=(0.0, 1.0, 2), num_steps=4,
                               eval_batch_size=16, hessian_batch_size=16, batch_size=8)
  raise ValueError(f"Unknown scale_gpt2 option {arg!r}; use 'gpt2', 'quick' or nothing.")
