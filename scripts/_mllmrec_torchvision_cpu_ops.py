"""Start-up hook: lets PyPI's CUDA torchvision import on CPU torch (installed as a .pth start-up hook by
scripts/vllm_cpu_env.sh and scripts/vision_libs_env.sh into their venvs; never part of the package).

torchvision's Python package registers fake kernels for `torchvision::nms` / `torchvision::qnms`
at import time; the CUDA build's C++ library, which defines those ops, does not load against the CPU
torch, so the import fails with "operator torchvision::nms does not exist". Defining the two schemas
first lets the import succeed; the ops themselves stay unimplemented (nothing in vLLM's image
preprocessing, nor an image classifier's forward pass, calls them). A meta-path finder instead of an
eager import keeps `import torch` out of every interpreter start; a .pth file, because vLLM imports
models in spawned subprocesses.
"""
import sys


class _DefineTorchvisionOpsFirst:
    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        library = torch.library.Library("torchvision", "DEF")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        sys.modules["_mllmrec_torchvision_cpu_ops_library"] = library  # keep it alive
        return None  # let the normal finders import torchvision


sys.meta_path.insert(0, _DefineTorchvisionOpsFirst())
