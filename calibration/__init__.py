"""INT8 calibration: images in, a QDQ model whose decisions and certificates match fp32.

:mod:`.data` reads calibration images (a folder or Fashion-MNIST) through the
runtime's preprocessing; :mod:`.int8` quantizes with onnxruntime (flavours
``tensorrt``, ``cpu`` and ``cpu-avx2``) and caches the activation ranges. Whether
the INT8 model decides and certifies like fp32 is measured by
:mod:`patchguard.export.agreement`, as for every other artifact. onnxruntime
and onnx are imported only when a model is quantized.
"""
from .data import DEFAULT_CALIB_SIZE, FASHION_MNIST
from .int8 import DEFAULT_FLAVOR, FLAVOR_HELP, FLAVORS, int8_path, quantize_int8

__all__ = [
    "DEFAULT_CALIB_SIZE", "FASHION_MNIST", "DEFAULT_FLAVOR", "FLAVOR_HELP", "FLAVORS",
    "int8_path", "quantize_int8",
]
