"""SAEs: the Sae module (SAELens layout), losses, trainer and kernels, boost, evaluation, steering.

``backend.sae.load_sae(path)`` reads an SAE folder (this project's, SAELens's or sparsify's) into a ``Sae``.
"""

from backend.sae.model import Sae, SaeError, SaeSpec, check_site, load_sae

__all__ = ["Sae", "SaeError", "SaeSpec", "check_site", "load_sae"]
