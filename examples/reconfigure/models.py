import random


class Threshold:
    def __init__(self):
        # self.model won't be changed by reconfigure.
        self.model = random.Random()  # Imagine this is some heavyweight model.

    def reconfigure(self, config):
        # Called when each replica starts and whenever user_config changes,
        # on the running replicas: no restart, the model stays loaded.
        self.threshold = config["threshold"]

    def __call__(self, request):
        return self.model.random() > self.threshold
