import os


class GpuReport:
    """Reports the GPU Ray gave this replica and, where torch and a GPU exist, runs a matrix product on it."""

    def __call__(self, request):
        import ray

        report = {
            "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "gpu_ids": [str(i) for i in ray.get_gpu_ids()],
            "pid": os.getpid(),
        }
        try:
            import torch
        except ImportError:
            return report
        if torch.cuda.is_available():
            x = torch.randn(1024, 1024, device="cuda")
            report["torch_sum"] = float((x @ x).sum().item())
            report["device"] = torch.cuda.get_device_name(0)
        return report
