"""The training step, replayed: composable parts emit allocation and free events in program
order with an owner tag, and one sweep gives each phase's peak and what it is made of.

* :mod:`.events`: the event program and the sweep (knows nothing about models);
* :mod:`.states`: the model states (weights, adapters, gradients, optimizer state, sharding);
* :mod:`.layers`: each layer kind's saved tensors and transients, the checkpoint policy,
  autocast's weight copies, the loss' tensors;
* :mod:`.forward`, :mod:`.backward`: the phases' events, unsharded; :mod:`.fsdp`: FSDP2's;
* :mod:`.terms`: the derivation (``--explain``);
* :mod:`.stage`: one pipeline stage's rank, assembled.
"""

from .context import Ctx
from .stage import stage_base, stage_estimate, stage_run

__all__ = ["Ctx", "stage_estimate", "stage_base", "stage_run"]
