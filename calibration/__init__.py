"""INT8 calibration: images in, a QDQ model whose decisions and certificates match fp32.

:mod:`.data` reads calibration images (a folder or Fashion-MNIST) through the
runtime's preprocessing; :mod:`.int8` quantizes with onnxruntime (flavours
``tensorrt`` and ``cpu``) and caches the activation ranges; :mod:`.parity`
measures how often the INT8 model agrees with fp32. onnxruntime and onnx
are imported only when a model is quantized.
"""
from .data import DEFAULT_CALIB_SIZE, FASHION_MNIST
from .int8 import DEFAULT_FLAVOR, FLAVOR_HELP, FLAVORS, int8_path, quantize_int8
from .parity import MIN_AGREEMENT, int8_agreement

__all__ = [
    "DEFAULT_CALIB_SIZE", "FASHION_MNIST", "DEFAULT_FLAVOR", "FLAVOR_HELP", "FLAVORS",
    "int8_path", "quantize_int8", "MIN_AGREEMENT", "int8_agreement",
]
