"""Library-specific exceptions."""

from __future__ import annotations

__all__ = ["TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """The ELBO (or its gradient) became NaN or infinite; training stopped and the last finite state was restored.

    Attributes
    ----------
    step : int
        Global optimisation step at which the non-finite value appeared.
    epoch : int
        Epoch of that step.
    loss : float
        The offending loss value.
    """

    def __init__(self, message: str, *, step: int, epoch: int, loss: float) -> None:
        super().__init__(message)
        self.step = step
        self.epoch = epoch
        self.loss = loss
