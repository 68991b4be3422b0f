"""Discriminators and hinge losses for the adversarial term of stages Ib and ib-recon: a head on the frozen
encoder's features (the default) or a small pixel-space PatchGAN, and the adaptive weight that balances them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    """PatchGAN-style: strided convolutions to a grid of real/fake logits (images in [-1, 1])."""

    def __init__(self, width: int = 64, layers: int = 3) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(3, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = width
        for _ in range(layers - 1):
            blocks += [
                nn.Conv2d(channels, channels * 2, 4, stride=2, padding=1),
                nn.GroupNorm(8, channels * 2),
                nn.LeakyReLU(0.2),
            ]
            channels *= 2
        blocks.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


class EncoderFeatureDiscriminator(nn.Module):
    """A small trainable head on the frozen encoder's patch tokens (B×N×D → one real/fake logit per token).

    The frozen encoder is the discriminator's backbone, as RAE's frozen-DINO discriminator is, so nothing is
    downloaded: real tokens are the cached features of the target images, and fake tokens are the encoder's
    features of the decoded images, which the perceptual term computes anyway. The encoder is not a submodule
    (it stays frozen and out of this head's optimiser); the generator's gradient flows through it."""

    def __init__(self, feature_dim: int, grid_size: int, width: int = 128) -> None:
        super().__init__()
        self.grid_size = grid_size
        self.norm = nn.LayerNorm(feature_dim)
        self.proj = nn.Linear(feature_dim, width)
        # spatial mixing over the token grid: a patch is judged together with its neighbours
        self.mix = nn.Sequential(
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GroupNorm(8, width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.norm(tokens))  # B×N×W
        grid = h.transpose(1, 2).reshape(h.shape[0], h.shape[2], self.grid_size, self.grid_size)
        return self.mix(grid)


def adaptive_weight(
    reconstruction_loss: torch.Tensor,
    adversarial_loss: torch.Tensor,
    last_layer: torch.Tensor,
    max_weight: float = 1e4,
) -> torch.Tensor:
    """VQGAN's balance: ‖∇_W L_rec‖ / ‖∇_W L_adv‖ at the decoder's last layer W, so that the adversarial
    gradient starts at the reconstruction gradient's size whatever the losses' scales (detached, capped)."""
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adv_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (adv_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
