"""Acquisition-site options: contrast, lesion contrast, noise, bias, blur, gain, slice thickness,
skull stripping and lesion morphology, with named presets for out-of-distribution test sets.

:data:`SITE_DEFAULTS` is the one place where the training ("in_domain") values live; the
generator reproduces its historical output byte for byte at these values.  :data:`SITES` holds
named presets (partial dicts over :data:`SITE_DEFAULTS`, plus an optional ``spacing``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["SITE_DEFAULTS", "SITES", "LESION_SHAPES", "Site", "resolve_site"]

LESION_SHAPES = ("ovoid", "irregular", "confluent", "elongated")
"""The lesion shapes of the ``lesion_shapes`` site option: ellipsoids (elongation 1-2), unions of 2-4
ellipsoids, merged plaques of 3-7 ellipsoids, and thin ellipsoids (elongation 2.5-4) perpendicular to the
ventricle wall (Dawson's fingers)."""

SITE_DEFAULTS = dict(
    tissue_contrast=1.0,  # scale of the CSF/GM/WM mean differences around their mean, per channel
    contrast_jitter=0.05,  # per-subject log-normal jitter (sigma) of each tissue mean
    lesion_contrast=1.0,  # scale of the lesion's (tumour compartments') deviation from WM
    noise=(0.01, 0.04),  # Rician sigma as a fraction of the brightest tissue (SNR 100 .. 25)
    bias=0.15,  # maximum std of the log bias field (per channel U(0.3, 1) x bias)
    blur=(0.3, 0.6),  # Gaussian PSF sigma in voxels, one value per case
    log_gain=(-0.2, 0.2),  # gain = exp(U(lo, hi)) per channel
    slice_thickness_mm=None,  # FWHM of the slice profile along axis 2; None = the spacing
    skull_strip=True,  # False: a skull and scalp around the brain, noise everywhere
    lesion_shapes=("ovoid",),  # lesion task: shapes drawn uniformly per lesion (LESION_SHAPES)
)
"""The acquisition-site options and their training ("in_domain") values.

* ``tissue_contrast``: scale of the CSF / GM / WM mean differences around their mean, per channel, in
  ``(0, 1.3]``;
* ``contrast_jitter``: per-subject log-normal jitter (sigma) of each tissue mean, in ``[0, 1]``;
* ``lesion_contrast``: scale of the lesion's (tumour compartments') deviation from WM, in ``(0, 2]``;
* ``noise``: ``(lo, hi)`` range of the Rician sigma as a fraction of the brightest tissue, drawn per channel;
* ``bias``: maximum standard deviation of the log bias field (per channel ``U(0.3, 1) x bias``), in ``[0, 2]``;
* ``blur``: ``(lo, hi)`` range of the Gaussian PSF sigma in voxels, one value per case;
* ``log_gain``: ``(lo, hi)``, the gain of each channel is ``exp(U(lo, hi))``, within ``[-3, 3]``;
* ``slice_thickness_mm``: FWHM of the slice profile along axis 2; None: the spacing;
* ``skull_strip``: True: zero outside the brain; False: a skull and scalp around it, noise everywhere;
* ``lesion_shapes``: lesion task only, the shapes drawn uniformly per lesion (names of ``LESION_SHAPES``).
"""

# Named sites.  "spacing" (mm, scalar or 3 values) is the site's default grid; an explicit
# ``spacing`` argument overrides it.  Keys are checked against SITE_DEFAULTS at import.
SITES = {
    "in_domain": {},
    # Another scanner, same population, skull-stripped: flatter contrast, lower SNR, stronger
    # bias, thick axial slices.
    "scanner": dict(
        tissue_contrast=0.7,
        contrast_jitter=0.1,
        lesion_contrast=0.6,
        noise=(0.05, 0.10),
        bias=0.35,
        log_gain=(-0.5, 0.5),
        spacing=(1.0, 1.0, 3.0),
        slice_thickness_mm=3.0,
    ),
    # Another site and population, not skull-stripped: a head around the brain, irregular,
    # confluent and elongated (Dawson's fingers) lesions.
    "site_c": dict(
        tissue_contrast=0.85,
        lesion_contrast=0.8,
        noise=(0.03, 0.07),
        bias=0.25,
        spacing=1.2,
        skull_strip=False,
        lesion_shapes=("irregular", "confluent", "elongated"),
    ),
}
"""Named acquisition sites: partial dicts over ``SITE_DEFAULTS``, plus an optional default ``spacing``.

* ``in_domain``: the training distribution (``SITE_DEFAULTS``);
* ``scanner``: another scanner, same population, skull-stripped: flatter contrast, lower SNR, stronger bias,
  thick axial slices (1 x 1 x 3 mm);
* ``site_c``: another site and population, not skull-stripped (a head around the brain), irregular,
  confluent and elongated lesions, 1.2 mm.
"""

_TISSUE_CONTRAST_MAX = 1.3  # above this the FLAIR CSF mean (0.12 around a mean of 0.47) turns negative
_LESION_CONTRAST_MAX = 2.0
_KNOWN = set(SITE_DEFAULTS) | {"spacing"}
if any(set(p) - _KNOWN for p in SITES.values()):  # pragma: no cover - a typo in a preset
    raise RuntimeError(f"unknown keys in SITES: { {k: sorted(set(p) - _KNOWN) for k, p in SITES.items()} }")


class Site(NamedTuple):
    """A resolved site: its ``name``, the full validated ``options`` (task-specific: no
    ``lesion_shapes`` for the tumour task) and its default ``spacing`` (None: the generator's).

    Attributes:
        name: the preset's name (``"in_domain"`` for ``site=None``), or ``"custom"`` for a mapping.
        options: every key of ``SITE_DEFAULTS`` with its validated value (ranges as ``(lo, hi)`` float tuples,
            ``lesion_shapes`` as a tuple), the preset's and the explicit overrides' in place of the defaults.
        spacing: the site's grid spacing in mm (one value or three), used when the caller gives no
            ``spacing``; None: the generator's default (``DEFAULT_SPACING``).
    """

    name: str
    options: dict[str, Any]
    spacing: float | Sequence[float] | None


def _range(name, value, lo_min=0.0, hi_max=None):
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a range (lo, hi), got {value!r}") from None
    if not (lo_min is None or lo >= lo_min) or not hi >= lo or (hi_max is not None and hi > hi_max):
        bound = f"{lo_min} <= lo <= hi" + (f" <= {hi_max}" if hi_max is not None else "")
        raise ValueError(f"{name} must satisfy {bound}, got {value!r}")
    return (lo, hi)


def _number(name, value, lo, hi, lo_open=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not ((v > lo) if lo_open else (v >= lo)) or not v <= hi:
        raise ValueError(f"{name} must lie in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")
    return v


def _validate(opts: dict) -> dict:
    """Type-normalised copy of ``opts`` (all SITE_DEFAULTS keys), or ValueError."""
    out = dict(opts)
    out["tissue_contrast"] = _number("tissue_contrast", opts["tissue_contrast"], 0.0, _TISSUE_CONTRAST_MAX, True)
    out["contrast_jitter"] = _number("contrast_jitter", opts["contrast_jitter"], 0.0, 1.0)
    out["lesion_contrast"] = _number("lesion_contrast", opts["lesion_contrast"], 0.0, _LESION_CONTRAST_MAX, True)
    out["noise"] = _range("noise", opts["noise"], 0.0, 1.0)
    out["bias"] = _number("bias", opts["bias"], 0.0, 2.0)
    out["blur"] = _range("blur", opts["blur"], 0.0, 10.0)
    out["log_gain"] = _range("log_gain", opts["log_gain"], None, None)
    if max(abs(v) for v in out["log_gain"]) > 3.0:
        raise ValueError(f"log_gain must lie within [-3, 3], got {opts['log_gain']!r}")
    t = opts["slice_thickness_mm"]
    out["slice_thickness_mm"] = None if t is None else _number("slice_thickness_mm", t, 0.0, 50.0, True)
    if not isinstance(opts["skull_strip"], bool):
        raise ValueError(f"skull_strip must be True or False, got {opts['skull_strip']!r}")
    if "lesion_shapes" in opts:
        shapes = opts["lesion_shapes"]
        if isinstance(shapes, str):
            shapes = (shapes,)
        if not isinstance(shapes, Sequence) or not shapes:
            raise ValueError(
                f"lesion_shapes must be a non-empty sequence of {LESION_SHAPES}, got {opts['lesion_shapes']!r}"
            )
        bad = [s for s in shapes if s not in LESION_SHAPES]
        if bad:
            raise ValueError(f"unknown lesion_shapes name(s) {bad}: use {LESION_SHAPES}")
        out["lesion_shapes"] = tuple(shapes)
    return out


def resolve_site(task: str, site: str | Mapping[str, Any] | None = None, **overrides: Any) -> Site:
    """Resolve ``site`` (None / a name in :data:`SITES` / a mapping of site options) and the
    explicit ``overrides`` (site option keywords) into a validated :class:`Site`.

    Preset (or mapping) values replace :data:`SITE_DEFAULTS`; ``overrides`` replace both.
    ``lesion_shapes`` is a lesion-task option: for ``task="tumour"`` a preset's value is
    dropped, an explicit one raises ValueError.

    Args:
        task: the task the options are for, ``"lesion"`` or ``"tumour"``. Aliases are not resolved here: any
            name other than ``"lesion"`` is treated as a task without ``lesion_shapes``.
        site: None (``"in_domain"``: ``SITE_DEFAULTS``, the training distribution), the name of a preset of
            ``SITES`` (``"scanner"``, ``"site_c"``), or a mapping of site options (and optionally
            ``"spacing"``) that replace the defaults, named ``"custom"``.
        **overrides: site options by name (keys of ``SITE_DEFAULTS``, not ``spacing``), which replace the
            preset's values.

    Returns:
        The validated `Site` ``(name, options, spacing)``.

    Raises:
        ValueError: ``site`` names no preset; an option value is out of its range or of the wrong form
            (e.g. ``noise`` not a ``(lo, hi)`` pair, ``skull_strip`` not a bool, an unknown lesion shape); or
            ``lesion_shapes`` is in ``overrides`` for a task other than ``"lesion"``.
        TypeError: ``site`` is not None, a string or a mapping, or an option name (in the mapping or in
            ``overrides``) is not a site option.
    """
    if site is None:
        name, preset = "in_domain", {}
    elif isinstance(site, str):
        if site not in SITES:
            raise ValueError(f"unknown site {site!r}: known sites are {sorted(SITES)}")
        name, preset = site, SITES[site]
    elif isinstance(site, Mapping):
        name, preset = "custom", dict(site)
    else:
        raise TypeError(f"site must be None, a name in {sorted(SITES)} or a mapping of site options, got {site!r}")
    unknown = sorted(set(preset) - _KNOWN)
    if unknown:
        raise TypeError(f"unknown site option(s) {unknown}; known: {sorted(_KNOWN)}")
    unknown = sorted(set(overrides) - set(SITE_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown site option(s) {unknown}; known: {sorted(SITE_DEFAULTS)}")
    preset = dict(preset)
    spacing = preset.pop("spacing", None)
    opts = {**SITE_DEFAULTS, **preset, **overrides}
    if task != "lesion":
        if "lesion_shapes" in overrides:
            raise ValueError(f"lesion_shapes applies to the lesion task only, not to task {task!r}")
        opts.pop("lesion_shapes")
    return Site(name, _validate(opts), spacing)
