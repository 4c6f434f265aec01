"""SAEs: the Sae module (SAELens layout), losses, trainer and kernels, boost, evaluation, steering.

``backend.sae.load_sae(path)`` reads an SAE folder (this project's, SAELens's or sparsify's) into a ``Sae``;
``backend.sae.load_pretrained(path, hookpoint)`` reads every outside format (formats.py) and says where it came from.
"""

from backend.sae.formats import load_pretrained
from backend.sae.model import Sae, SaeError, SaeSpec, check_site, load_sae

__all__ = ["Sae", "SaeError", "SaeSpec", "check_site", "load_pretrained", "load_sae"]
