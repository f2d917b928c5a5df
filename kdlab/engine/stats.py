"""Model statistics for the final table: parameters, MACs, saved size, CPU latency."""

from __future__ import annotations

import copy
import io
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode



def state_dict_bytes(module: nn.Module) -> int:
    """Size in bytes of the module's state_dict as ``torch.save`` writes it."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Parameter entries that are not zero: the size a sparse format would store after pruning."""
    return sum(int(p.count_nonzero()) for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward on ``example`` (flop_counter counts 2 flops per MAC)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example)
    return counter.get_total_flops() // 2


def cpu_latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 10) -> float:
    """Median wall time of a forward on ``example`` on the CPU, after two warm-up calls."""
    times = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            model(example)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def model_stats(model: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> dict[str, float]:
    """``params``, ``nonzero_params``, ``macs`` (one sample; speech models: one second of audio),
    ``bytes`` (saved state_dict), ``latency_ms`` (one batch, CPU)."""
    cpu = copy.deepcopy(model).cpu().train(False)
    # models whose input is not the data's sample shape (speech: raw audio for one model,
    # features for another) give their own example: one second of input
    one = cpu.example_input() if hasattr(cpu, "example_input") else torch.zeros(1, *input_shape)
    return {
        "params": count_parameters(cpu),
        "nonzero_params": count_nonzero(cpu),
        "macs": count_macs(cpu, one),
        "bytes": state_dict_bytes(cpu),
        "latency_ms": round(cpu_latency_ms(cpu, one.expand(batch_size, *one.shape[1:]).contiguous()), 4),
    }
