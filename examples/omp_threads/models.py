import os


class Parallel:
    """Reports the thread settings its process started with and what numpy's BLAS uses."""

    def __init__(self):
        import numpy  # imported after the environment was set: it reads the thread variables now

        self.numpy = numpy

    def __call__(self, request):
        from threadpoolctl import threadpool_info

        return {
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "blas_threads": [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"],
        }
