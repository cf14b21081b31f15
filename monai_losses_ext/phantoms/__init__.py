"""Synthetic lesion and tumour cases on real anatomy.

The anatomy is the MNI152 2009 template (T1, GM and WM maps) that nilearn ships inside its
package; it is read from the installed nilearn at run time and never copied into this
repository.  Each case deforms the tissue maps into a new subject, synthesises MR contrasts
from tissue classes, inserts synthetic lesions with partial volume, and adds a bias field,
blur and Rician noise.  The lesions are synthetic and the ground truth is exact:
the label is ``occupancy >= 0.5``.  See docs/phantoms.md.

>>> from monai_losses_ext.phantoms import generate_case, write_dataset
>>> image, label, affine, info = generate_case("tumour", seed=0, index=3)    # doctest: +SKIP
>>> write_dataset("data/synth_lesion", "lesion", num_cases=32, workers=2)    # doctest: +SKIP

Out-of-distribution test sets: ``site="scanner"`` / ``"site_c"`` (see :data:`SITES`) or the
individual site options of :data:`SITE_DEFAULTS` (contrast, noise, bias, slice thickness, skull
stripping, lesion shapes), e.g. ``generate_case("lesion", 7, 0, site="scanner")``.

Command line: ``python -m monai_losses_ext.phantoms --task lesion --out DIR --num-cases 32``
(``--site scanner`` and the acquisition flags for a shifted test set).
"""

from ._atlas import atlas_paths, load_atlas
from ._generate import (
    DEFAULT_FOV_MM,
    DEFAULT_SPACING,
    LABELS,
    MODALITIES,
    TASKS,
    Case,
    generate_case,
    output_grid,
    task_options,
)
from ._io import case_name, write_dataset, write_nifti
from ._lesion import LESION_DEFAULTS
from ._site import LESION_SHAPES, SITE_DEFAULTS, SITES, Site, resolve_site
from ._subject import HEAD_MEANS, TISSUE_MEANS
from ._tumour import TUMOUR_DEFAULTS

__all__ = [
    "Case",
    "DEFAULT_FOV_MM",
    "DEFAULT_SPACING",
    "HEAD_MEANS",
    "LABELS",
    "LESION_DEFAULTS",
    "LESION_SHAPES",
    "MODALITIES",
    "SITES",
    "SITE_DEFAULTS",
    "Site",
    "TASKS",
    "TISSUE_MEANS",
    "TUMOUR_DEFAULTS",
    "atlas_paths",
    "case_name",
    "generate_case",
    "load_atlas",
    "output_grid",
    "resolve_site",
    "task_options",
    "write_dataset",
    "write_nifti",
]
