"""Models that take any connection: the toy MLP (and, later, the GPT and the MoE GPT)."""

from hclib.models.mlp import DeepMLP
from hclib.models.wiring import CONNECTIONS, build_connection, enter_state, leave_state

__all__ = ["CONNECTIONS", "DeepMLP", "build_connection", "enter_state", "leave_state"]
