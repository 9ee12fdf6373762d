class BatchingExample:
    """The seed's counter: __call__ receives a list of requests and returns a list of responses."""

    def __init__(self):
        self.count = 0

    def __call__(self, requests):
        responses = []
        for request in requests:
            self.count += 1
            responses.append({"count": self.count, "batch_size": len(requests)})
        return responses
