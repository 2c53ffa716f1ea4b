"""PreResNet-164 on CIFAR-10 with Garipov et al.'s (2018) endpoint recipe (dnn-mode-connectivity).

SGD momentum 0.9, lr 0.1, weight decay 3e-4, batch 128, 150 epochs, Garipov schedule (factor 1
until 50 %, linear to 0.01 at 90 %), crop + flip. Reference test error: about 4.75 %.
``cifar10_preresnet164.py:preresnet110`` for the shallower one.
Compute (estimate, cifar10_li2018.py explains it): 0.49 GFLOP/image forward, 150 epochs ~11 PFLOP;
the 164 thin layers are overhead-bound: ~1.5 GPU-hours per endpoint (A100/H100 class).
"""

from configs import defaults


def get_config(arg=None):
  return defaults.train(
    dataset="cifar10", model=arg or "preresnet164", num_epochs=150, batch_size=128,
    optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=False, weight_decay=3e-4,
    schedule="garipov", augment=True, augment_pad=4, augment_flip=True,
    checkpoint_every_epochs=10, eval_batch_size=1000, log_every_steps=50)
