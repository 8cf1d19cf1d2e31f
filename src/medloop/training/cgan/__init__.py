"""Training recipe of the mask-conditioned cGAN (Mahapatra et al., MICCAI 2018, Eqs. 1-5).

``config`` (``CGANConfig``: every option and its only default), ``pairs`` (training pairs made by the mask
perturbations), ``losses`` (NMI, VGG features, the generator's loss), ``mask_ae`` (the mask autoencoder whose
code conditions the generator), ``trainer`` (alternating D / G updates) and ``fit`` (``fit_generator``: all of
it, returning a ``medloop.synth.generator.MaskConditionedSampler`` that renders variants).
"""

from medloop.training.cgan.config import CGANConfig
from medloop.training.cgan.fit import build_vgg, check_vgg_source, fit_generator
from medloop.training.cgan.losses import GeneratorLoss, VGGFeatures, adversarial_loss, nmi
from medloop.training.cgan.mask_ae import reconstruction_dice, train_mask_autoencoder
from medloop.training.cgan.pairs import epoch_pairs, training_pairs
from medloop.training.cgan.trainer import CGANTrainer, build_discriminator, build_generator, train_cgan

__all__ = ["CGANConfig", "CGANTrainer", "GeneratorLoss", "VGGFeatures", "adversarial_loss", "build_discriminator",
           "build_generator", "build_vgg", "check_vgg_source", "epoch_pairs", "fit_generator", "nmi",
           "reconstruction_dice", "train_cgan", "train_mask_autoencoder", "training_pairs"]
