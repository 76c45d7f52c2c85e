"""What judges SinGAN's generator at one scale (`Config.loss`), chosen once, behind one small
interface, so that the training step (singan.recipes.singan.training.train_scale) never asks which it has:

- `Critic` (wgan_gp, the paper's): a patch discriminator trained with WGAN-GP, `d_steps` steps
  per iteration; the generator's adversarial loss is -mean D(fake).
- `PatchLoss` (frechet, nnpl, annpl: singan.metrics.patch_losses): no network; the generator's loss is a
  distance between the fake's and the real image's patch distributions.

Each critic step of an iteration draws its own `prev`, and the generator steps use the last one;
a patch loss has no critic to train, so its one "critic step" only draws that `prev`. Every loss
is one value per image: K images train together, stacked along the channels (layers.stack).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from singan import streams
from singan.base import gradient_penalty, per_image_mean
from singan.layers import init_weights, stack, trainable, unstack
from singan.metrics.patch_losses import aligned_nn_patch_loss, frechet_patch_loss, nn_patch_loss
from singan.recipes.singan.networks import Discriminator, Scale
from singan.settings import Config


class Adversary:
    """The interface: `critic_steps` passes per iteration, each an `update`; the generator
    minimises `generator_loss` (one value per image); `losses()` gives the last (d_real, d_fake,
    gradient penalty) per image for the log, Nones without a critic; `critics()` gives what
    each image's finished Scale keeps (None without a critic)."""

    critic_steps: int = 1

    def update(self, real: Tensor, generator: nn.Module, *inputs: Tensor) -> None:
        """One critic step against generator(*inputs), run without gradients (a patch loss
        has no critic: nothing to do, and the generator does not run)."""

    def generator_loss(self, fake: Tensor, real: Tensor) -> Tensor:
        raise NotImplementedError

    def losses(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return None, None, None

    def end_iteration(self) -> None:
        """After each iteration (the learning-rate schedule)."""

    def critics(self) -> list[nn.Module | None]:
        raise NotImplementedError


class Critic(Adversary):
    """WGAN-GP: the critic maximises mean D(real) - mean D(fake), with the gradient penalty."""

    def __init__(self, config: Config, channels: int, warm: Sequence[Scale] | None,
                 rngs: Sequence[torch.Generator], device: torch.device, dtype: torch.dtype):
        if warm is not None:  # the previous scale, as wide as this one: start from its critic
            singles = [copy.deepcopy(level.discriminator) for level in warm]
        else:
            singles = [Discriminator(channels, config).to(device=device, dtype=dtype)
                       for _ in rngs]
            for critic, rng in zip(singles, rngs):
                init_weights(critic, config.init_std, rng)
        self.singles = singles
        self.images = len(singles)
        self.module = stack(singles, Discriminator(channels, config, self.images).to(
            device=device, dtype=dtype)).train()
        self.config, self.rngs = config, rngs
        self.critic_steps = config.d_steps
        self.optimizer = torch.optim.Adam(trainable(self.module), lr=config.lr_d,
                                          betas=(config.beta1, config.beta2), foreach=True)
        self.schedule = torch.optim.lr_scheduler.MultiStepLR(self.optimizer,
                                                             [config.lr_milestone], config.gamma)
        self.d_real = self.d_fake = self.penalty = None

    def update(self, real: Tensor, generator: nn.Module, *inputs: Tensor) -> None:
        critic, images = self.module, self.images
        with torch.no_grad():
            fake = generator(*inputs)
        self.d_real = -per_image_mean(critic(real), images)
        self.d_fake = per_image_mean(critic(fake), images)
        e = torch.stack([streams.uniform((), generator=rng, device=real.device, dtype=real.dtype)
                         for rng in self.rngs])
        self.penalty = self.config.lambda_grad * gradient_penalty(critic, real, fake, e, images)
        self.optimizer.zero_grad(set_to_none=True)
        (self.d_real + self.d_fake + self.penalty).sum().backward()
        self.optimizer.step()

    def generator_loss(self, fake: Tensor, real: Tensor) -> Tensor:
        return -per_image_mean(self.module(fake), self.images)

    def losses(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return self.d_real, self.d_fake, self.penalty

    def end_iteration(self) -> None:
        self.schedule.step()

    def critics(self) -> list[nn.Module | None]:
        return unstack(self.module, self.singles)


class PatchLoss(Adversary):
    """A loss between the fake's and the real image's k x k patches in place of the critic."""

    def __init__(self, loss: Callable[[Tensor, Tensor, int], Tensor], config: Config,
                 rngs: Sequence[torch.Generator]):
        self.loss, self.patch_size, self.images = loss, config.patch_size, len(rngs)

    def generator_loss(self, fake: Tensor, real: Tensor) -> Tensor:
        pairs = zip(fake.chunk(self.images, dim=1), real.chunk(self.images, dim=1), strict=True)
        return torch.stack([self.loss(f, r, self.patch_size) for f, r in pairs])

    def critics(self) -> list[nn.Module | None]:
        return [None] * self.images


def _patch_loss(loss: Callable[[Tensor, Tensor, int], Tensor]) -> Callable[..., Adversary]:
    return lambda config, channels, warm, rngs, device, dtype: PatchLoss(loss, config, rngs)


# Config.loss -> the adversary of one scale, made from (config, channels, the previous scale of
# each image when this one starts from it (same width) or None, the images' random streams of
# this scale, device, dtype).
ADVERSARIES: dict[str, Callable[..., Adversary]] = {
    "wgan_gp": Critic,
    "frechet": _patch_loss(frechet_patch_loss),
    "nnpl": _patch_loss(nn_patch_loss),
    "annpl": _patch_loss(aligned_nn_patch_loss),
}
