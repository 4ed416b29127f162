"""mgtool: grow neural networks the MixtureGrowth way (Pham et al., WACV 2024)."""

__version__ = "0.1.0"

from mgtool.convert import convert  # noqa: E402
from mgtool.errors import MgtoolError  # noqa: E402
from mgtool.export import export  # noqa: E402
from mgtool.loading import load, load_checkpoint  # noqa: E402

__all__ = ["MgtoolError", "__version__", "convert", "export", "load", "load_checkpoint"]
