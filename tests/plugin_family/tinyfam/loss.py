"""The non-saturating logistic loss (Goodfellow et al. 2014), a loss no built-in family uses."""

from __future__ import annotations

import torch.nn.functional as F

from trainers.losses.base import GanLoss, Phase


def tiny_phases() -> list[Phase]:
    return [Phase("D", "D"), Phase("G", "G")]


class NonSaturatingLoss(GanLoss):
    def accumulate_gradients(self, phase, real, state):
        fake = self.generate(len(real), state, real.device)
        if phase.trains == "D":
            loss = F.softplus(-self.discriminate(real, state)).mean()
            loss = loss + F.softplus(self.discriminate(fake.detach(), state)).mean()
        else:
            loss = F.softplus(-self.discriminate(fake, state)).mean()
        loss.backward()
        return {"loss": loss.detach()}
