"""Export stage: PyTorch BagNet -> ONNX (fp32, fp16, int8) -> TensorRT engine.

Modules, in chain order: ``onnx`` (torch -> ONNX, the only torch importer),
``onnxfile`` (load / label / save ONNX), ``probe`` (locality check), ``fp16``,
``engine`` (TensorRT build, torch-free), ``parity`` (report) with ``agreement``
(the decision measures and bars it shares with the INT8 check), ``pipeline``
(orders the steps, stages the files), ``cli`` (pg-export).
"""
