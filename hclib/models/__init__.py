"""Models that take any connection: the toy MLP, the GPT and its MoE feed-forward layer."""

from hclib.models.gpt import GPT, GPTConfig
from hclib.models.mlp import DeepMLP
from hclib.models.moe import MoE
from hclib.models.wiring import CONNECTIONS, build_connection, enter_state, leave_state

__all__ = [
    "CONNECTIONS",
    "GPT",
    "DeepMLP",
    "GPTConfig",
    "MoE",
    "build_connection",
    "enter_state",
    "leave_state",
]
