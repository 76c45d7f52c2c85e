"""What judges SinGAN's generator at one scale (`Config.loss`), chosen once, behind one small
interface, so that the training step (singan.train.train_scale) never asks which it has:

- `Critic` (wgan_gp, the paper's): a patch discriminator trained with WGAN-GP, `d_steps` steps
  per iteration; the generator's adversarial loss is -mean D(fake).
- `PatchLoss` (frechet, nnpl, annpl: singan.patch_losses): no network; the generator's loss is a
  distance between the fake's and the real image's patch distributions.

Each critic step of an iteration draws its own `prev`, and the generator steps use the last one;
a patch loss has no critic to train, so its one "critic step" only draws that `prev`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from singan import streams
from singan.base import gradient_penalty
from singan.config import Config
from singan.layers import init_weights, trainable
from singan.models import Discriminator, Scale
from singan.patch_losses import aligned_nn_patch_loss, frechet_patch_loss, nn_patch_loss


class Adversary:
    """The interface: `critic_steps` passes per iteration, each an `update`; the generator
    minimises `generator_loss`; `losses()` gives the last (d_real, d_fake, gradient penalty)
    for the log, Nones without a critic; `module` is what the finished Scale keeps."""

    critic_steps: int = 1
    module: nn.Module | None = None

    def update(self, real: Tensor, generator: nn.Module, *inputs: Tensor) -> None:
        """One critic step against generator(*inputs), run without gradients (a patch loss
        has no critic: nothing to do, and the generator does not run)."""

    def generator_loss(self, fake: Tensor, real: Tensor) -> Tensor:
        raise NotImplementedError

    def losses(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return None, None, None

    def end_iteration(self) -> None:
        """After each iteration (the learning-rate schedule)."""


class Critic(Adversary):
    """WGAN-GP: the critic maximises mean D(real) - mean D(fake), with the gradient penalty."""

    def __init__(self, config: Config, channels: int, warm: Scale | None,
                 rng: torch.Generator, device: torch.device, dtype: torch.dtype):
        if warm is not None:  # the previous scale, as wide as this one: start from its critic
            critic = copy.deepcopy(warm.discriminator)
        else:
            critic = Discriminator(channels, config).to(device=device, dtype=dtype)
            init_weights(critic, config.init_std, rng)
        self.module = critic.train()
        self.config, self.rng = config, rng
        self.critic_steps = config.d_steps
        self.optimizer = torch.optim.Adam(trainable(critic), lr=config.lr_d,
                                          betas=(config.beta1, config.beta2), foreach=True)
        self.schedule = torch.optim.lr_scheduler.MultiStepLR(self.optimizer,
                                                             [config.lr_milestone], config.gamma)
        self.d_real = self.d_fake = self.penalty = None

    def update(self, real: Tensor, generator: nn.Module, *inputs: Tensor) -> None:
        critic = self.module
        with torch.no_grad():
            fake = generator(*inputs)
        self.d_real = -critic(real).mean()
        self.d_fake = critic(fake).mean()
        e = streams.uniform((), generator=self.rng, device=real.device, dtype=real.dtype)
        self.penalty = self.config.lambda_grad * gradient_penalty(critic, real, fake, e)
        self.optimizer.zero_grad(set_to_none=True)
        (self.d_real + self.d_fake + self.penalty).backward()
        self.optimizer.step()

    def generator_loss(self, fake: Tensor, real: Tensor) -> Tensor:
        return -self.module(fake).mean()

    def losses(self) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        return self.d_real, self.d_fake, self.penalty

    def end_iteration(self) -> None:
        self.schedule.step()


class PatchLoss(Adversary):
    """A loss between the fake's and the real image's k x k patches in place of the critic."""

    def __init__(self, loss: Callable[[Tensor, Tensor, int], Tensor], config: Config):
        self.loss, self.patch_size = loss, config.patch_size

    def generator_loss(self, fake: Tensor, real: Tensor) -> Tensor:
        return self.loss(fake, real, self.patch_size)


# Config.loss -> the adversary of one scale, made from (config, channels, the previous scale
# when this one starts from it (same width) or None, the scale's random stream, device, dtype).
ADVERSARIES: dict[str, Callable[..., Adversary]] = {
    "wgan_gp": Critic,
    "frechet": lambda config, *_: PatchLoss(frechet_patch_loss, config),
    "nnpl": lambda config, *_: PatchLoss(nn_patch_loss, config),
    "annpl": lambda config, *_: PatchLoss(aligned_nn_patch_loss, config),
}
