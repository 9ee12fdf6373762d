"""Code only the test cluster's workers can import: the fixture puts this directory on their PYTHONPATH, not the CLI's."""
import os


class Greeter:
    def __call__(self, request):
        return {"greeting": "hello from the workers", "version": os.environ.get("WORKER_MODELS_VERSION", "1")}
