"""The UniRepLKNet family (paper Table 4) and the default per-block kernel sizes of the official checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

KernelSizes = tuple[tuple[int, ...], ...]


def _stage3(lark: int, smak_after_each: int) -> tuple[int, ...]:
    """Stage 3 of the deeper models: each LarK (13) block followed by ``smak_after_each`` SmaK (3) blocks."""
    return tuple(k for _ in range(lark) for k in (13,) + (3,) * smak_after_each)


#: depths -> default kernel size of every block, per stage (Guidelines 8 and 9).
DEFAULT_KERNEL_SIZES: dict[tuple[int, ...], KernelSizes] = {
    (2, 2, 6, 2): ((3, 3), (13, 13), (13,) * 6, (13, 13)),
    (2, 2, 8, 2): ((3, 3), (13, 13), (13,) * 8, (13, 13)),
    (3, 3, 18, 3): ((3, 3, 3), (13, 13, 13), _stage3(9, 1), (13, 13, 13)),
    (3, 3, 27, 3): ((3, 3, 3), (13, 13, 13), _stage3(9, 2), (13, 13, 13)),
}


def default_kernel_sizes(depths: tuple[int, ...]) -> KernelSizes:
    """The default kernel-size table for ``depths``; a clear error when there is none."""
    key = tuple(int(d) for d in depths)
    if key not in DEFAULT_KERNEL_SIZES:
        known = ", ".join(str(k) for k in DEFAULT_KERNEL_SIZES)
        raise ValueError(f"no default kernel sizes for depths {key} (defaults exist for {known}); "
                         "pass kernel_sizes=, one tuple of per-block sizes per stage")
    return DEFAULT_KERNEL_SIZES[key]


@dataclass(frozen=True)
class Variant:
    """One row of Table 4."""

    name: str
    depths: tuple[int, int, int, int]
    dims: tuple[int, int, int, int]


def _dims(c: int) -> tuple[int, int, int, int]:
    return (c, 2 * c, 4 * c, 8 * c)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("unireplknet_a", (2, 2, 6, 2), _dims(40)),
    Variant("unireplknet_f", (2, 2, 6, 2), _dims(48)),
    Variant("unireplknet_p", (2, 2, 6, 2), _dims(64)),
    Variant("unireplknet_n", (2, 2, 8, 2), _dims(80)),
    Variant("unireplknet_t", (3, 3, 18, 3), _dims(80)),
    Variant("unireplknet_s", (3, 3, 27, 3), _dims(96)),
    Variant("unireplknet_b", (3, 3, 27, 3), _dims(128)),
    Variant("unireplknet_l", (3, 3, 27, 3), _dims(192)),
    Variant("unireplknet_xl", (3, 3, 27, 3), _dims(256)),
    Variant("unireplknet_h", (3, 3, 27, 3), _dims(480)),  # Table 4 only; no official code or weights
)}


def architecture(model: str | None, arch: dict | None = None) -> dict:
    """UniRepLKNet constructor kwargs: the depths and widths of the Table 4 variant ``model`` (if any), updated by
    the custom ``arch`` kwargs (e.g. ``kernel_sizes``)."""
    kwargs: dict = {}
    if model is not None:
        if model not in VARIANTS:
            raise ValueError(f"unknown model '{model}'; use one of {', '.join(VARIANTS)} or set arch")
        kwargs = {"depths": list(VARIANTS[model].depths), "dims": list(VARIANTS[model].dims)}
    return {**kwargs, **(arch or {})}
