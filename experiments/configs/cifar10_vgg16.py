"""VGG-16 on CIFAR-10 with Garipov et al.'s (2018) endpoint recipe (dnn-mode-connectivity).

SGD momentum 0.9 (not Nesterov), lr 0.05, weight decay 5e-4, batch 128, 200 epochs; lr factor 1
until half of training, linear to 0.01 at 90 %, then 0.01, set per epoch; crop + flip. Reference
test error of such endpoints: 6.79-6.94 %. ``cifar10_vgg16.py:vgg16_bn`` for the BN variant.
Compute (estimate, cifar10_li2018.py explains it): VGG16 is 0.50 GFLOP/image forward; 200 epochs
~15 PFLOP, ~0.5 GPU-hour per endpoint on one A100/H100-class GPU.
"""

from configs import defaults


def get_config(arg=None):
  return defaults.train(
    dataset="cifar10", model=arg or "vgg16", num_epochs=200, batch_size=128,
    optimizer="sgd", learning_rate=0.05, momentum=0.9, nesterov=False, weight_decay=5e-4,
    schedule="garipov", augment=True, augment_pad=4, augment_flip=True,
    checkpoint_every_epochs=10, eval_batch_size=1000, log_every_steps=50)
