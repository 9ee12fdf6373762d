class VersionReport:
    """Imports the package from the backend's own environment and reports which version it got."""

    def __init__(self):
        import tabulate

        self.tabulate = tabulate

    def __call__(self, request):
        table = self.tabulate.tabulate([["version", self.tabulate.__version__]])
        return {"version": self.tabulate.__version__, "table": table}
