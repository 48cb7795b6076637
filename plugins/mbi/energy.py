"""The energy model: energy per key comparison, per table read and per MAC, and the energy of one
inference of MBI (counted lookups) and of networks computed normally (MACs counted from the modules).

Constants (`EnergyParams`, each overridable in a suite under `energy:`), their sources:

| constant | default | source |
|---|---|---|
| `cam_search_fj_per_bit` | 2.89 fJ per bit per stored key | Pagiamtzis & Sheikholeslami, "A low-power content-addressable memory (CAM) using pipelined hierarchical search scheme", IEEE JSSC 39(9), 2004: 1024 x 144-bit ternary CAM, 0.18 um, 2.89 fJ/bit/search |
| `sram_read_pj` | 10 pJ per access (64 bits) | Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm: 8 KB SRAM cache, 64-bit read |
| `digital_mac_pj` | 4.6 pJ | Horowitz 2014, 45 nm: 32-bit float multiply 3.7 pJ + add 0.9 pJ |
| `digital_int8_mac_pj` | 0.23 pJ | Horowitz 2014, 45 nm: 8-bit integer multiply 0.2 pJ + add 0.03 pJ |
| `cim_mac_fj` | 5.7 fJ | Sinangil et al., "A 7-nm compute-in-memory SRAM macro supporting multi-bit input, weight and output and achieving 351 TOPS/W and 372.4 GOPS", IEEE JSSC 56(1), 2021: 351 TOPS/W at 4b x 4b; 1 MAC = 2 operations (the usual convention; an assumption, the abstract does not define an operation), so 2 / 351e12 J |

The numbers were checked against secondary copies of the sources (the abstracts, and a published
table that reproduces Horowitz's 45 nm figures), not against the original PDFs. They come from
different technology nodes (0.18 um CAM, 45 nm digital, 7 nm CIM) and are macro-level: no
control, no data movement between macros, no DRAM. The MBI paper uses its own in-memory lookup
circuits and CIM baselines, so only the orders of magnitude are comparable with its figures.

Networks computed normally are charged MACs only (their weight and activation reads are left out,
which favours them); MBI is charged its key comparisons (bits compared x the CAM energy) and its
reads (table entries and image rows, one SRAM access each).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from memeval.api import Strict
from memeval_plugins.mbi.tables import OpCounts

SOURCES = {
    "cam_search_fj_per_bit": "Pagiamtzis & Sheikholeslami, IEEE JSSC 39(9) 2004 (0.18 um ternary CAM, 2.89 fJ/bit/search)",
    "sram_read_pj": "Horowitz, ISSCC 2014 (45 nm, 8 KB SRAM, 64-bit read: 10 pJ)",
    "digital_mac_pj": "Horowitz, ISSCC 2014 (45 nm, fp32 multiply 3.7 pJ + add 0.9 pJ)",
    "digital_int8_mac_pj": "Horowitz, ISSCC 2014 (45 nm, int8 multiply 0.2 pJ + add 0.03 pJ)",
    "cim_mac_fj": "Sinangil et al., IEEE JSSC 56(1) 2021 (7 nm CIM SRAM, 351 TOPS/W at 4b x 4b; 1 MAC = 2 ops)",
}

# The paper's headline ratios (Giacomini et al. 2023, abstract): MBI's energy efficiency against CIM baselines.
PAPER_RATIOS = {"mlp_cim_over_mbi": 2.7, "cnn_cim_over_mbi": 83.0}


class EnergyParams(Strict):
    cam_search_fj_per_bit: float = Field(
        2.89,
        gt=0,
        description="key comparison energy per bit per stored key (fJ; Pagiamtzis & Sheikholeslami, JSSC 2004)",
    )
    sram_read_pj: float = Field(
        10.0,
        gt=0,
        description="energy of one table or image read (pJ; Horowitz, ISSCC 2014: 8 KB SRAM, 64 bits)",
    )
    digital_mac_pj: float = Field(
        4.6, gt=0, description="digital fp32 multiply-accumulate (pJ; Horowitz, ISSCC 2014, 45 nm)"
    )
    digital_int8_mac_pj: float = Field(
        0.23, gt=0, description="digital int8 multiply-accumulate (pJ; Horowitz, ISSCC 2014, 45 nm)"
    )
    cim_mac_fj: float = Field(
        2 / 351e12 * 1e15,
        gt=0,
        description="compute-in-memory multiply-accumulate (fJ; Sinangil et al., JSSC 2021: 351 TOPS/W, 2 ops per MAC)",
    )


def lookup_energy_pj(counts: OpCounts, energy: EnergyParams) -> float:
    """Energy of one MBI inference (pJ): comparisons and reads per inference, each at its constant."""
    per = counts.per_inference()
    return (
        per["bits_compared"] * energy.cam_search_fj_per_bit / 1000
        + per["table_reads"] * energy.sram_read_pj
    )


def compute_energy_pj(macs: float, energy: EnergyParams) -> dict[str, float]:
    """Energy of one inference computed normally (pJ), per MAC technology."""
    return {
        "cim": macs * energy.cim_mac_fj / 1000,
        "digital_fp32": macs * energy.digital_mac_pj,
        "digital_int8": macs * energy.digital_int8_mac_pj,
    }


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass over `x` (per example), counted by forward hooks on
    every nn.Linear (in x out per row) and nn.Conv2d (output elements x in/groups x kernel area)
    in eval mode; the layers a forward pass does not call are not counted."""
    total = [0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        total[0] += _macs(module, output)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total[0] // len(x)


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        return output.numel() // module.out_features * module.in_features * module.out_features
    kernel = module.kernel_size[0] * module.kernel_size[1]
    return output.numel() * (module.in_channels // module.groups) * kernel
