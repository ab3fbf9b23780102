"""The optional extras (onnx, onnxruntime): imported when needed, or one
line saying how to install them. The tools and the rest of the package
check them here only."""
from ..engine import UsageError


class MissingExtrasError(UsageError):
    """onnx or onnxruntime is not installed."""


def require_onnx(runtime_only: bool = False):
    """Import onnxruntime (and onnx unless ``runtime_only``), or fail with
    one line saying how to install them. Returns the onnxruntime module."""
    try:
        if not runtime_only:
            import onnx  # noqa: F401
        import onnxruntime
    except ImportError as error:
        raise MissingExtrasError(
            f'ONNX deployment needs onnx and onnxruntime ({error}); install '
            f'them with: pip install -e .[export]') from None
    return onnxruntime
