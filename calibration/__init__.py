"""INT8 calibration: images in, a QDQ model whose decisions and certificates match fp32.

:mod:`.data` draws calibration images (a folder, read by the runtime's image
readers, or Fashion-MNIST) and preprocesses them as the runtime does;
:mod:`.int8` turns an fp32 ``onnx.ModelProto`` into a QDQ one with onnxruntime
(flavours ``tensorrt``, ``cpu`` and ``cpu-avx2``) and caches the activation
ranges. Loading, labelling and saving the files is the export stage's
(``patchguard.export.pipeline.write_int8``). Whether
the INT8 model decides and certifies like fp32 is measured by
:mod:`patchguard.export.agreement`, as for every other artifact. onnxruntime
and onnx are imported only when a model is quantized.
"""
from .data import DEFAULT_CALIB_SIZE, FASHION_MNIST, CalibrationReader, calibration_source
from .int8 import DEFAULT_FLAVOR, FLAVOR_HELP, FLAVORS, int8_metadata, int8_path, quantize_int8

__all__ = [
    "DEFAULT_CALIB_SIZE", "FASHION_MNIST", "CalibrationReader", "calibration_source",
    "DEFAULT_FLAVOR", "FLAVOR_HELP", "FLAVORS", "int8_metadata", "int8_path", "quantize_int8",
]
