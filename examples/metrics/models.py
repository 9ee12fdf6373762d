from ray.util import metrics

import servectl


class MyBackendClass:
    def __init__(self):
        self.my_counter = metrics.Counter(
            "excellent_requests",
            description="The number of excellent requests to this backend.",
            tag_keys=("backend",),
        )
        self.my_counter.set_default_tags({"backend": servectl.get_current_backend_tag()})

    def __call__(self, request):
        if "fail" in request.query_params:
            raise ValueError("asked to fail")
        if "excellent" in request.query_params:
            self.my_counter.inc()
        return "ok"
