"""Parameters and multiply-accumulates of the variants (paper Tables 4 and 5)."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

logger = logging.getLogger(__name__)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (deploy form: what Table 4 quotes)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> int:
    """Multiply-accumulates of one forward pass on a single (C, H, W) input (half torch's FLOP count).

    Runs on the meta device (no memory, no arithmetic), so even the largest variants are counted instantly.
    """
    meta = copy.deepcopy(model).to("meta") if next(model.parameters()).device.type != "meta" else model
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty(1, *input_size, device="meta"))
    return counter.get_total_flops() // 2


@dataclass
class VariantRow:
    """One row of the variant table."""

    name: str
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    train_params: int
    deploy_params: int
    resolution: int
    gmacs: float
    reparam_rel_error: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def randomize_reparam_terms(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Move every term that re-parameterization folds away from its initial value, in place: BatchNorm
    affine and running statistics, layer scale (0.5–1) and GRN gamma/beta, so a misplaced term shows."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                c, dtype = module.num_features, module.running_mean.dtype
                module.running_mean.copy_(0.1 * torch.randn(c, generator=generator, dtype=dtype))
                module.running_var.copy_(torch.rand(c, generator=generator, dtype=dtype) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator, dtype=dtype) + 0.5)
                module.bias.copy_(0.1 * torch.randn(c, generator=generator, dtype=dtype))
        for name, param in model.named_parameters():
            if name.endswith(".gamma") and param.ndim == 1:  # layer scale
                param.copy_(torch.rand(param.shape, generator=generator, dtype=param.dtype) * 0.5 + 0.5)
            elif ".act.1." in name:  # GRN gamma, beta
                param.copy_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model


def reparameterization_error(name: str, resolution: int = 64, seed: int = 0) -> float:
    """‖deploy − train‖/‖train‖ of a random variant with every folded term randomized, in float64."""
    from unireplknet.models import create_model

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = randomize_reparam_terms(create_model(name).double().eval(), gen)
    with torch.no_grad():
        x = torch.randn(2, 3, resolution, resolution, generator=gen, dtype=torch.float64)
        y_train = model(x)
        y_deploy = model.reparameterize()(x)
    return float((y_deploy - y_train).norm() / y_train.norm())


def variant_table(names: list[str] | None = None, resolution: int | None = None,
                  reparam_check: bool = False) -> list[VariantRow]:
    """Params (train and deploy form) and GMACs of the deploy model; resolution defaults to Table 5's
    (224, or 384 for B/L/XL). ``reparam_check`` adds the float64 re-parameterization error (64² input) for
    every variant up to XL (H, 1.35B parameters, would need ~11 GB in float64; it is built like XL)."""
    from unireplknet.models import VARIANTS, create_model

    rows = []
    for name in names or list(VARIANTS):
        res = resolution or (384 if name in ("unireplknet_b", "unireplknet_l", "unireplknet_xl") else 224)
        with torch.device("meta"):
            train = create_model(name)
            deploy = create_model(name, deploy=True)
        row = VariantRow(name, train.depths, train.dims, count_parameters(train), count_parameters(deploy), res,
                         count_macs(deploy, (3, res, res)) / 1e9)
        if reparam_check and row.deploy_params < 1e9:
            row.reparam_rel_error = reparameterization_error(name)
        logger.debug("%s: %s", name, row)
        rows.append(row)
    return rows


def format_table(rows: list[VariantRow]) -> str:
    """A plain-text table: name, depths, C, params (deploy), GMACs at the row's resolution, reparam error."""
    lines = [f"{'model':<16}{'depths':<16}{'C':>5}{'params (deploy)':>18}{'params (train)':>17}"
             f"{'res':>6}{'GMACs':>9}{'reparam err':>14}"]
    for r in rows:
        err = f"{r.reparam_rel_error:.1e}" if r.reparam_rel_error is not None else "-"
        lines.append(f"{r.name:<16}{'-'.join(map(str, r.depths)):<16}{r.dims[0]:>5}{r.deploy_params:>18,}"
                     f"{r.train_params:>17,}{r.resolution:>6}{r.gmacs:>9.2f}{err:>14}")
    return "\n".join(lines)
