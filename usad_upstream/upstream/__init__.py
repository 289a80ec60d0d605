"""USAD as an s3prl upstream. Importing this applies `compat.patch_s3prl()` (s3prl needs it)."""
from .expert import UpstreamExpert, UsadUpstreamError
from .hubconf import register_s3prl_upstreams, usad, usad_local

__all__ = ["UpstreamExpert", "UsadUpstreamError", "register_s3prl_upstreams", "usad", "usad_local"]
