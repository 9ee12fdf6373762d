import random
import time


class Model:
    """A stand-in model: answers with its version; a bad candidate fails some requests or answers slowly."""

    def __init__(self, version, fail_ratio=0.0, delay_ms=0):
        self.version, self.fail_ratio, self.delay_s = version, fail_ratio, delay_ms / 1000

    def __call__(self, request):
        if self.delay_s:
            time.sleep(self.delay_s)
        if random.random() < self.fail_ratio:
            raise RuntimeError(f"{self.version}: failed (fail_ratio {self.fail_ratio})")
        return self.version
